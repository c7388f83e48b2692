/**
 * `gen-durable demo` is the CLI's long-running command: a SIGINT (Ctrl-C) mid-run drains its
 * node, drops its throw-away schema and exits with 130 — nothing left behind.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { eventually, useTestSchema } from './support/db.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const db = useTestSchema('cli_demo');

describe('gen-durable demo', () => {
  it('drains, drops its schema and exits 130 on SIGINT mid-run', async () => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'cli/main.ts', 'demo', '--orders', '20000', '--database-url', db.url],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', () => undefined);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const schema = await eventually(
        () => Promise.resolve(/schema (demo_[a-z0-9]+)/.exec(out)?.[1]),
        'the demo to name its schema',
      );
      // Mid-run: some orders done, most not.
      await eventually(async () => {
        const { rows } = await db.pool
          .query<{ n: number }>(
            `SELECT count(*)::int AS n FROM "${schema}".gen_durable WHERE status = 'done'`,
          )
          .catch(() => ({ rows: [{ n: 0 }] }));
        return rows[0]!.n > 0 ? true : undefined;
      }, 'the first finished orders');
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(out).toContain('interrupted: the node drained');
      const { rows } = await db.pool.query(`SELECT 1 FROM pg_namespace WHERE nspname = $1`, [schema]);
      expect(rows).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
