/**
 * The service contract: start() and stop() are idempotent and safe in any order; periodic
 * services run through runOnce(). The feeder's modes are driven here through its seams
 * (claim and dispatch functions), without a database: its SQL is tested in loop-sql.test.ts.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
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

/** Waits (real timers) until `check` holds; fails after a generous deadline. */
const until = async (check: () => boolean): Promise<void> => {
  const deadline = Date.now() + 10_000;
  while (!check() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
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

/**
 * A feeder over a fake backlog of `available` rows; `nextDue` answers from `dueIn` (then null).
 */
function feederOver(available: number, concurrency: number, dueIn: Array<number | null> = []) {
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
      return Promise.resolve(dueIn.shift() ?? null);
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

// Fake timers where a test asserts that something does not happen: advancing the clock runs
// every timer that would have fired by then, so "nothing happened" is not a guess about timing.
afterEach(() => {
  vi.useRealTimers();
});

describe('PeriodicService', () => {
  it('start and stop are idempotent and safe in any order', async () => {
    vi.useFakeTimers();
    const s = new Counter();
    await s.stop(); // before start
    s.start();
    s.start(); // a second start must not schedule a second chain of rounds
    await vi.advanceTimersByTimeAsync(25); // rounds at 0, 10 and 20 ms
    expect(s.runs).toBe(3);
    await Promise.all([s.stop(), s.stop()]);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.runs).toBe(3);
    s.start(); // and again
    await vi.advanceTimersByTimeAsync(15); // rounds at 0 and 10 ms
    expect(s.runs).toBe(5);
    await s.stop();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(s.runs).toBe(5);
  });

  it('stop waits for the round in progress', async () => {
    let finish = (): void => undefined;
    const s = new (class extends Counter {
      override runOnce(): Promise<void> {
        this.runs++;
        return new Promise((resolve) => {
          finish = resolve;
        });
      }
    })();
    s.start();
    await until(() => s.runs === 1);
    let stopped = false;
    const stopping = s.stop().then(() => {
      stopped = true;
    });
    // Every pending continuation runs before the next turn: a stop that did not wait is done by then.
    await new Promise((resolve) => setImmediate(resolve));
    expect(stopped).toBe(false);
    finish();
    await stopping;
    expect(s.runs).toBe(1);
  });

  it('keeps running after a failing round, reporting the error', async () => {
    vi.useFakeTimers();
    const s = new Counter(true);
    s.start();
    await vi.advanceTimersByTimeAsync(25);
    await s.stop();
    expect(s.runs).toBe(3);
    expect(s.errors).toHaveLength(3);
    expect(s.errors.every((e) => e instanceof Error && e.message === 'boom')).toBe(true);
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
    expect(state.requested).toEqual([3, 2, 3]);
    feeder.completed(2);
    expect(feeder.inFlight).toBe(0);
    // A wake-up claims again, once: had the completion claimed too, its request would show here.
    state.available = 1;
    feeder.wake();
    await until(() => state.dispatched === 8);
    await Promise.all([feeder.stop(), feeder.stop()]);
    expect(state.requested).toEqual([3, 2, 3, 3]);
  });

  it('looks up the next due time after starting and after a due timer fires, and wakes then', async () => {
    vi.useFakeTimers();
    const { feeder, state } = feederOver(0, 2, [null, 50]);
    feeder.start();
    await vi.advanceTimersByTimeAsync(0);
    // Work scheduled before the node joined: the first short claim is followed by a look-up.
    expect(state).toMatchObject({ requested: [2], lookups: 1 });
    // Beyond a timer's reach (Node would fire such a timer after 1 ms): armed at the reach.
    feeder.wakeIn(MAX_TIMER_MS + 1);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(state).toMatchObject({ requested: [2], lookups: 1 });
    // A due timer: it claims, then looks up the next due time (50 ms), which claims again.
    feeder.wakeIn(20);
    await vi.advanceTimersByTimeAsync(40);
    expect(state).toMatchObject({ requested: [2, 2], lookups: 2 });
    await vi.advanceTimersByTimeAsync(100);
    expect(state).toMatchObject({ requested: [2, 2, 2], lookups: 3 });
    // No further due time: idle, no more claims.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(state).toMatchObject({ requested: [2, 2, 2], lookups: 3 });
    await feeder.stop();
  });

  it('claims nothing after stop, whatever wakes it', async () => {
    vi.useFakeTimers();
    const { feeder, state } = feederOver(5, 2);
    feeder.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(state).toMatchObject({ requested: [2], dispatched: 2 });
    feeder.wakeIn(500); // armed before stop: stop must disarm it
    await feeder.stop();
    feeder.wake();
    feeder.completed(2);
    feeder.wakeIn(1);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_MS);
    expect(state).toMatchObject({ requested: [2], dispatched: 2 });
  });
});
