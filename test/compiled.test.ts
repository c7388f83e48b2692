/** The compiled package runs `.js` machine modules in a plain Node process (no tsx anywhere). */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestSchema } from './support/db.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const db = useTestSchema('compiled');

describe('compiled package', () => {
  beforeAll(async () => {
    await run('npm', ['run', 'build'], { cwd: root });
  }, 120_000);

  it('runs a .js machine in worker threads of a node in a separate plain-node process', async () => {
    const host = fileURLToPath(new URL('./fixtures/compiled/host.mjs', import.meta.url));
    const { stdout } = await run(process.execPath, [host, db.url, db.schema, 'ada'], {
      cwd: root,
      env: { ...process.env, NODE_OPTIONS: '' },
      timeout: 60_000,
    });
    expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toEqual({
      status: 'done',
      result: { text: 'hello ada, from thread' },
    });
  });
});
