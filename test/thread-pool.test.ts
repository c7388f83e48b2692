/**
 * The thread pool on its own (no database): results a worker posted before its reply, or
 * before its thread died, all reach the main thread, whatever order the two channels are
 * read in.
 */
import { describe, expect, it } from 'vitest';
import type { StepRequest, StepResult } from '../runtime/executor.js';
import { MachineRegistry } from '../runtime/registry.js';
import { QueuePool } from '../threads/pool.js';
import { all, exiter, later, quick } from './fixtures/pool-machines.js';

let next = 0;
function request(machine: { name: string; version: number }): StepRequest {
  return {
    id: String(++next),
    machine: machine.name,
    version: machine.version,
    step: 'perform',
    state: '{}',
    attempt: 0,
    maxAttempts: 3,
    correlationKey: null,
    inbox: null,
    awaiting: null,
    timedOut: false,
    children: null,
  };
}

/** Holds the main thread's event loop, so that what the threads send meanwhile waits together. */
function hold(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy: nothing on this thread runs meanwhile
  }
}

async function run(pool: QueuePool, batch: StepRequest[], holdMs: number): Promise<Map<string, StepResult>> {
  const results = new Map<string, StepResult>();
  const settled = new Promise<void>((resolve) =>
    pool.execute(batch, (r) => {
      results.set(r.id, r);
      if (results.size === batch.length) resolve();
    }),
  );
  // The threads post and reply while this thread reads nothing.
  hold(holdMs);
  await settled;
  return results;
}

/** A one-thread pool over the fixture jobs, warmed up (its modules loaded), closed after `fn`. */
async function withPool(fn: (pool: QueuePool) => Promise<void>): Promise<void> {
  const pool = new QueuePool({
    queue: 'pool',
    threads: 1,
    concurrency: 8,
    registry: new MachineRegistry(all),
  });
  try {
    await run(pool, [request(quick)], 0);
    await fn(pool);
  } finally {
    await pool.close();
  }
}

describe('the thread pool', () => {
  it('delivers the results a worker posted before its reply, read after it', () =>
    withPool(async (pool) => {
      const batch = [...Array.from({ length: 6 }, () => request(quick)), request(later)];
      const results = await run(pool, batch, 500);
      expect(batch.map((r) => results.get(r.id)?.kind)).toEqual(batch.map(() => 'done'));
      expect(results.get(batch.at(-1)!.id)).toMatchObject({ result: '"later"' });
    }));

  it('delivers the result a batch-mate posted before its thread died, not a failure for it', () =>
    withPool(async (pool) => {
      const quicks = Array.from({ length: 6 }, () => request(quick));
      const batch = [...quicks, request(exiter)];
      // The quick results are posted, then the thread exits, while this thread reads nothing.
      const results = await run(pool, batch, 500);
      for (const q of quicks) expect(results.get(q.id)).toMatchObject({ kind: 'done', result: '"quick"' });
      // The step that ended its thread counts as an error (retried by the default policy).
      expect(results.get(batch.at(-1)!.id)).toMatchObject({ kind: 'retry' });
      expect(results.get(batch.at(-1)!.id)?.error).toMatch(/worker thread died/);
    }));
});
