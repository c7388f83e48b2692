/**
 * `gen-durable bench` runs the benchmark suite of the checkout with the options it is given
 * (the suite itself is measured in `bench/`, never here).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));

function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'cli/main.ts', ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, out, err })));
}

describe('gen-durable bench', () => {
  it("hands its options to the suite: the suite's own help", async () => {
    const { code, out } = await cli(['bench', '--help']);
    expect(code).toBe(0);
    expect(out).toMatch(/--workloads drain,steps,latency,full,rss/);
    expect(out).toMatch(
      /--subjects gen-durable,gen-durable\+run-ahead,gen-durable\+retention-0,graphile-worker,pg-boss/,
    );
  });

  it("fails with the suite's usage error on a workload it does not have", async () => {
    const { code, err } = await cli(['bench', '--workloads', 'nope']);
    expect(code).toBe(2);
    expect(err).toMatch(/--workloads: unknown "nope"/);
  });
});
