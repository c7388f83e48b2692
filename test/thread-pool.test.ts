/**
 * The thread pool on its own (no database): results a worker posted before its reply, or
 * before its thread died, all reach the main thread, whatever order the two channels are
 * read in.
 */
import { describe, expect, it } from 'vitest';
import type { StepRequest, StepResult } from '../runtime/executor.js';
import { MachineRegistry } from '../runtime/registry.js';
import { QueuePool } from '../threads/pool.js';
import { TASK_WORTH_US, taskCount } from '../threads/step-times.js';
import { all, busy, exiter, later, quick, whereAmI } from './fixtures/pool-machines.js';

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

/** A pool over the fixture jobs (one thread unless told), warmed up (its modules loaded), closed after `fn`. */
async function withPool(fn: (pool: QueuePool) => Promise<void>, threads = 1): Promise<void> {
  const pool = new QueuePool({
    queue: 'pool',
    threads,
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

describe('how many threads a batch is spread over', () => {
  it('every thread while step times are unknown, then as many as carry a millisecond each', () => {
    expect(taskCount(10, 2, undefined)).toBe(2);
    expect(taskCount(1, 4, undefined)).toBe(1);
    // Quick steps (6 µs): 100 of them are one task; 1,000 are worth two threads.
    expect(taskCount(100, 2, 6)).toBe(1);
    expect(taskCount(1_000, 2, 6)).toBe(2);
    expect(taskCount(1_000, 8, 6)).toBe(6);
    // Slow steps: each is worth a thread of its own.
    expect(taskCount(3, 4, TASK_WORTH_US)).toBe(3);
    expect(taskCount(3, 2, 50_000)).toBe(2);
  });

  /** The threads the steps of one batch of `machine` reported they ran on. */
  async function threadsOf(
    pool: QueuePool,
    machine: typeof whereAmI | typeof busy,
    n: number,
  ): Promise<Set<string>> {
    const results = await run(
      pool,
      Array.from({ length: n }, () => request(machine)),
      0,
    );
    return new Set([...results.values()].map((r) => (r.kind === 'done' ? r.result : `not done: ${r.kind}`)));
  }

  it('runs a batch of quick steps on one thread, and slow ones (another machine) on all of them', () =>
    withPool(async (pool) => {
      // Until the estimate settles on quick steps (the first runs are slower, code not yet optimised).
      for (let i = 0; i < 12; i++) await threadsOf(pool, whereAmI, 8);
      expect((await threadsOf(pool, whereAmI, 8)).size).toBe(1);
      // Steps of another machine (5 ms each) have no estimate of their own yet: the quick
      // machine's does not put them on one thread. Once they replied, they are known to be slow.
      expect((await threadsOf(pool, busy, 4)).size).toBe(2);
      expect((await threadsOf(pool, busy, 4)).size).toBe(2);
    }, 2));
});
