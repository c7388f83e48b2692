/**
 * The service contract: start() and stop() are idempotent and safe in any order; periodic
 * services run through runOnce(). The feeder's modes are driven here through its seams
 * (claim and dispatch functions), without a database: its SQL is tested in loop-sql.test.ts.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_MS } from '../runtime/duration.js';
import { Feeder } from '../runtime/feeder.js';
import { PeriodicService } from '../runtime/service.js';
import type { ClaimedRow } from '../runtime/sql/claim.js';

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
    concurrency_key: null,
    parent_id: null,
    awaiting: null,
    timed_out: false,
    has_inbox: false,
    joined: false,
  };
}

/** A feeder over a fake backlog of `available` rows. */
function feederOver(available: number, concurrency: number) {
  const state = { available, requested: [] as number[], dispatched: 0 };
  const feeder = new Feeder({
    queue: 'q',
    concurrency,
    batchSize: 100,
    pollIntervalMs: MAX_TIMER_MS,
    claim: (limit) => {
      state.requested.push(limit);
      const n = Math.min(limit, state.available);
      state.available -= n;
      return Promise.resolve({
        rows: Array.from({ length: n }, (_, i) => row(i)),
        full: n === limit,
      });
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

  it('runNow runs a round at once, or once more right after the one in progress', async () => {
    vi.useFakeTimers();
    let finish = (): void => undefined;
    const s = new (class extends Counter {
      slow = false;
      override runOnce(): Promise<void> {
        this.runs++;
        if (!this.slow) return Promise.resolve();
        return new Promise((resolve) => {
          finish = resolve;
        });
      }
    })();
    s.runNow(); // not started: nothing
    await vi.advanceTimersByTimeAsync(0);
    expect(s.runs).toBe(0);
    s.start();
    await vi.advanceTimersByTimeAsync(0); // the first round at start
    expect(s.runs).toBe(1);
    await vi.advanceTimersByTimeAsync(5); // half-way to the next round (10 ms)
    s.runNow();
    await vi.advanceTimersByTimeAsync(0);
    expect(s.runs).toBe(2);
    s.slow = true;
    s.runNow();
    await vi.advanceTimersByTimeAsync(0);
    expect(s.runs).toBe(3); // in progress
    s.runNow();
    s.runNow(); // coalesced with the one before
    finish();
    await vi.advanceTimersByTimeAsync(0);
    expect(s.runs).toBe(4); // right after, not 10 ms later
    finish();
    await vi.advanceTimersByTimeAsync(9);
    expect(s.runs).toBe(4);
    await vi.advanceTimersByTimeAsync(1);
    expect(s.runs).toBe(5); // back to the interval
    finish();
    await s.stop();
    s.runNow(); // stopped: nothing
    await vi.advanceTimersByTimeAsync(100);
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

  it('keeps one local due timer, for the earliest due time, and claims when it fires', async () => {
    vi.useFakeTimers();
    const { feeder, state } = feederOver(0, 2);
    feeder.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(state.requested).toEqual([2]);
    // Beyond a timer's reach (Node would fire such a timer after 1 ms): armed at the reach.
    feeder.wakeIn(MAX_TIMER_MS + 1);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(state.requested).toEqual([2]);
    // The earliest wins; a later one does not re-arm the timer (the stager wakes that one).
    feeder.wakeIn(50);
    feeder.wakeIn(20);
    feeder.wakeIn(30);
    await vi.advanceTimersByTimeAsync(19);
    expect(state.requested).toEqual([2]);
    await vi.advanceTimersByTimeAsync(10);
    expect(state.requested).toEqual([2, 2]);
    // Nothing else armed: idle, no more claims.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(state.requested).toEqual([2, 2]);
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
