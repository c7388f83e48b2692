/**
 * The service contract: start() and stop() are idempotent and safe in any order; periodic
 * services run through runOnce(). The feeder's modes are driven here through its seams
 * (claim and dispatch functions), without a database: its SQL is tested in loop-sql.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { MAX_TIMER_MS } from '../runtime/duration.js';
import { Feeder } from '../runtime/feeder.js';
import { PeriodicService } from '../runtime/service.js';
import type { ClaimedRow } from '../runtime/sql/loop.js';

class Counter extends PeriodicService {
  runs = 0;
  errors: unknown[] = [];
  constructor(private readonly fail = false) {
    super(10);
  }
  runOnce(): Promise<void> {
    this.runs++;
    return this.fail ? Promise.reject(new Error('boom')) : Promise.resolve();
  }
  protected onError(error: unknown): void {
    this.errors.push(error);
  }
}

const until = async (check: () => boolean): Promise<void> => {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(check()).toBe(true);
};

function row(id: number): ClaimedRow {
  return {
    id: String(id),
    claim: '1',
    fsm: 'm',
    version: 1,
    step: 's',
    state: '{}',
    attempt: 0,
    max_attempts: 1,
    correlation_key: null,
  };
}

/** A feeder over a fake backlog of `available` rows. */
function feederOver(available: number, concurrency: number) {
  const state = { available, requested: [] as number[], dispatched: 0, lookups: 0 };
  const feeder = new Feeder({
    queue: 'q',
    concurrency,
    batchSize: 100,
    pollIntervalMs: MAX_TIMER_MS,
    claim: (limit) => {
      state.requested.push(limit);
      const n = Math.min(limit, state.available);
      state.available -= n;
      return Promise.resolve(Array.from({ length: n }, (_, i) => row(i)));
    },
    nextDue: () => {
      state.lookups++;
      return Promise.resolve(null);
    },
    dispatch: (rows) => {
      state.dispatched += rows.length;
    },
    onError: (error) => {
      throw error;
    },
  });
  return { feeder, state };
}

describe('PeriodicService', () => {
  it('start and stop are idempotent and safe in any order', async () => {
    const s = new Counter();
    await s.stop(); // before start
    s.start();
    s.start();
    await until(() => s.runs >= 3);
    await Promise.all([s.stop(), s.stop()]);
    const after = s.runs;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(s.runs).toBe(after);
    s.start(); // and again
    await until(() => s.runs > after);
    await s.stop();
  });

  it('keeps running after a failing round, reporting the error', async () => {
    const s = new Counter(true);
    s.start();
    await until(() => s.runs >= 2);
    await s.stop();
    expect(s.errors.length).toBeGreaterThanOrEqual(2);
  });
});

describe('Feeder', () => {
  it('claims only free slots, and again on completions only while backlogged', async () => {
    const { feeder, state } = feederOver(7, 3);
    feeder.start();
    await until(() => state.dispatched === 3);
    expect(state.requested).toEqual([3]); // full: backlogged, but no free slot
    feeder.completed(2);
    await until(() => state.dispatched === 5);
    feeder.completed(3);
    await until(() => state.dispatched === 7);
    // The last claim asked for 3 and got 2: the queue is drained, so completions claim nothing.
    const claims = state.requested.length;
    feeder.completed(2);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(state.requested.length).toBe(claims);
    expect(feeder.inFlight).toBe(0);
    // A wake-up claims again.
    state.available = 1;
    feeder.wake();
    await until(() => state.dispatched === 8);
    await Promise.all([feeder.stop(), feeder.stop()]);
  });

  it('looks up the next due time after starting and after a due timer fires', async () => {
    const { feeder, state } = feederOver(0, 2);
    feeder.start();
    // Work scheduled before the node joined: the first short claim is followed by a look-up.
    await until(() => state.lookups === 1);
    expect(state.requested.length).toBe(1);
    feeder.wakeIn(MAX_TIMER_MS + 1); // beyond a timer: armed at the timer's reach, not yet due
    feeder.wakeIn(20);
    await until(() => state.lookups === 2);
    expect(state.requested.length).toBe(2);
    await feeder.stop();
  });

  it('claims nothing after stop, whatever wakes it', async () => {
    const { feeder, state } = feederOver(5, 2);
    feeder.start();
    await until(() => state.dispatched === 2);
    await feeder.stop();
    feeder.wake();
    feeder.completed(2);
    feeder.wakeIn(1);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(state.dispatched).toBe(2);
  });
});
