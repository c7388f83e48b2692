/**
 * The service contract: start() and stop() are idempotent and safe in any order; periodic
 * services run through runOnce(). The feeder's modes are driven here through its seams
 * (claim and dispatch functions), without a database: its SQL is tested in loop-sql.test.ts.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_MS } from '../runtime/duration.js';
import { Feeder, type FeederOptions } from '../runtime/feeder.js';
import { PeriodicService } from '../runtime/service.js';
import { continuationOf } from '../runtime/run-ahead.js';
import { feederLimits } from '../cluster/queue-runtime.js';
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

/** A feeder over a fake backlog of `available` rows (no claim ahead unless asked). */
function feederOver(available: number, concurrency: number, extra: Partial<FeederOptions> = {}) {
  const state = {
    available,
    requested: [] as number[],
    dispatched: 0,
    batches: [] as number[],
    givenBack: [] as string[],
  };
  let next = 0;
  const feeder = new Feeder({
    queue: 'q',
    concurrency,
    batchSize: 100,
    pollIntervalMs: MAX_TIMER_MS,
    claimAhead: 0,
    maxUncommitted: 1_000,
    bufferWaitMs: 60_000,
    claim: (limit) => {
      state.requested.push(limit);
      const n = Math.min(limit, state.available);
      state.available -= n;
      return Promise.resolve({
        rows: Array.from({ length: n }, () => row(next++)),
        full: n === limit,
      });
    },
    dispatch: (rows) => {
      state.dispatched += rows.length;
      state.batches.push(rows.length);
    },
    giveBack: (rows) => {
      state.givenBack.push(...rows.map((r) => r.id));
    },
    onError: (error) => {
      throw error;
    },
    ...extra,
  });
  /** `n` steps report their results and those are committed. */
  const finish = (n: number): void => {
    feeder.stepsFinished(n);
    feeder.committed(n);
  };
  return { feeder, state, finish };
}

/**
 * A feeder whose picks wait for the test: `answer(n)` resolves the oldest pick out with `n`
 * rows (default: as many as it asked for); `requested` lists the limits asked, in order.
 */
function answeredFeeder(concurrency: number, claimAhead: number, now?: () => number) {
  const picks: Array<{ limit: number; resolve: (n: number) => void }> = [];
  const requested: number[] = [];
  let next = 0;
  const over = feederOver(0, concurrency, {
    claimAhead,
    ...(now ? { now } : {}),
    claim: (limit) => {
      requested.push(limit);
      return new Promise((resolve) =>
        picks.push({
          limit,
          resolve: (n) => resolve({ rows: Array.from({ length: n }, () => row(next++)), full: true }),
        }),
      );
    },
  });
  const answer = async (n?: number): Promise<void> => {
    await until(() => picks.length > 0);
    const pick = picks.shift()!;
    pick.resolve(n ?? pick.limit);
    await new Promise((resolve) => setImmediate(resolve));
  };
  /** Stops the feeder, answering the picks still out with no rows. */
  const stop = async (): Promise<void> => {
    const stopped = over.feeder.stop();
    picks.splice(0).forEach((p) => p.resolve(0));
    await stopped;
  };
  return { ...over, requested, answer, stop };
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
    const { feeder, state, finish } = feederOver(7, 3);
    feeder.start();
    await until(() => state.dispatched === 3);
    expect(state.requested).toEqual([3]); // full: backlogged, but no free slot
    finish(2);
    await until(() => state.dispatched === 5);
    finish(3);
    await until(() => state.dispatched === 7);
    // The last claim asked for 3 and got 2: the queue is drained, so completions claim nothing.
    expect(state.requested).toEqual([3, 2, 3]);
    finish(2);
    await new Promise((resolve) => setImmediate(resolve));
    expect(feeder.inFlight).toBe(0);
    // A wake-up claims again, once: had the completion claimed too, its request would show here.
    state.available = 1;
    feeder.wake();
    await until(() => state.dispatched === 8);
    await Promise.all([feeder.stop(), feeder.stop()]);
    expect(state.requested).toEqual([3, 2, 3, 3]);
  });

  it('frees a slot when its result arrives, and pauses claims while too many results wait for their commit', async () => {
    const { feeder, state } = feederOver(100, 2, { maxUncommitted: 3 });
    feeder.start();
    await until(() => state.dispatched === 2);
    // Results in, nothing committed yet: the slots are free, the next steps start.
    feeder.stepsFinished(2);
    await until(() => state.dispatched === 4);
    expect(feeder.inFlight).toBe(4); // 2 running + 2 waiting for their commit
    // 4 results would wait for commits, past the bound of 3: no claim until commits land.
    feeder.stepsFinished(2);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect({ requested: state.requested, running: feeder.running }).toEqual({
      requested: [2, 2],
      running: 0,
    });
    feeder.committed(2);
    await until(() => state.dispatched === 6);
    expect(state.requested).toEqual([2, 2, 2]);
    await feeder.stop();
  });

  it('claims ahead eight times what finished during its last pick, and starts it from the buffer without a claim', async () => {
    // Picks resolve when the test says, so steps can finish while one is out.
    const { feeder, state: counts, requested, answer, stop } = answeredFeeder(4, 20);
    feeder.start();
    await answer(); // 4 running
    feeder.stepsFinished(2);
    await until(() => requested.length === 2); // a pick for the 2 free slots is out...
    feeder.stepsFinished(2); // ...while 2 more steps finish
    await answer();
    // That pick saw 2 steps finish while it was out: 16 rows may wait ahead, so the next pick
    // asks for the 2 free slots and the 16 ahead.
    await answer();
    expect(requested).toEqual([4, 2, 18]);
    expect({ running: feeder.running, buffered: feeder.buffered, dispatched: counts.dispatched }).toEqual({
      running: 4,
      buffered: 16,
      dispatched: 8,
    });
    // A slot frees: a buffered row starts at once, with no claim in between.
    feeder.stepsFinished(1);
    await until(() => counts.dispatched === 9);
    expect(feeder.buffered).toBe(15);
    // Stop gives the buffered rows back (uncharged, committed as releases) and runs nothing more.
    await stop();
    expect(counts.givenBack).toHaveLength(15);
    expect(counts.dispatched).toBe(9);
  });

  it('waits for room for half the rows that may wait ahead before it picks again, instead of a pick per freed slot', async () => {
    const { feeder, requested, answer, stop } = answeredFeeder(10, 20);
    const turns = async (): Promise<void> => {
      for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    feeder.start();
    await answer(10); // 10 running
    feeder.stepsFinished(5); // a pick for the 5 free slots goes out...
    await until(() => requested.length === 2);
    feeder.stepsFinished(5); // ...while the other 5 finish: 20 may wait ahead (claimAhead)
    await answer(5); // 5 running; room for 10 + 20 - 5 = 25
    await until(() => requested.length === 3);
    feeder.stepsFinished(1); // 1 finishes while that pick is out: 8 may wait ahead, so 4 are worth a pick
    await answer(15); // 6 of them start (10 running), 9 wait: no room
    expect(requested.slice(0, 3)).toEqual([10, 5, 25]);
    const before = requested.length;
    // Slots free one at a time, each taking a buffered row: room grows by one each time.
    while (10 + 8 - feeder.running - feeder.buffered < 3) {
      feeder.stepsFinished(1);
      await turns();
    }
    // Room for 3 rows: not worth a pick yet.
    expect({ room: 10 + 8 - feeder.running - feeder.buffered, picks: requested.length }).toEqual({
      room: 3,
      picks: before,
    });
    feeder.stepsFinished(1);
    await until(() => requested.length === before + 1);
    expect(requested.at(-1)).toBe(4);
    await stop();
  });

  it('starts the rows that wait once per turn of the event loop, however many messages freed slots in it', async () => {
    const { feeder, state } = feederOver(3, 3);
    feeder.start();
    await until(() => state.dispatched === 3);
    feeder.resume([row(100), row(101), row(102)]); // all slots busy: they wait
    expect(feeder.buffered).toBe(3);
    // Three results messages handled in one turn, each freeing a slot.
    await new Promise<void>((resolve) => {
      for (let i = 0; i < 3; i++) setImmediate(() => feeder.stepsFinished(1));
      setImmediate(resolve);
    });
    await until(() => state.dispatched === 6);
    expect(state.batches).toEqual([3, 3]);
    await feeder.stop();
  });

  it('doubles the rows that may wait ahead when its steps all finished while a pick was out', async () => {
    const { feeder, requested, answer, stop } = answeredFeeder(2, 20);
    feeder.start();
    await answer(2); // 2 running
    feeder.stepsFinished(1); // a pick for the free slot goes out
    await until(() => requested.length === 2);
    feeder.stepsFinished(1); // nothing runs or waits while it is out: 1 finished, 8 may wait ahead
    await new Promise((resolve) => setImmediate(resolve));
    await answer(1); // 1 running: room for 2 + 8 - 1 = 9
    await until(() => requested.length === 3);
    feeder.stepsFinished(1); // drained again, with 1 finished: twice the 8 that could wait, not 8 x 1
    await new Promise((resolve) => setImmediate(resolve));
    await answer(9); // 2 running, 7 waiting: room for 2 + 16 - 9 = 9
    await until(() => requested.length === 4);
    expect(requested).toEqual([2, 1, 9, 9]);
    await stop();
  });

  it.each([
    ['ran for at most half a pick, a round of them waits ahead', 2.5, 5, [4, 4, 4]],
    ['ran for longer than half a pick, none waits ahead', 3, 5, [4, 4]],
    [
      'ran for less than half of one slow pick but longer than half the usual, none waits ahead',
      30,
      100,
      [4, 4],
    ],
  ])('when steps that all finish at once %s', async (_, stepMs, pickMs, picks) => {
    let clock = 0;
    const { feeder, requested, answer, stop } = answeredFeeder(4, 20, () => clock);
    feeder.start();
    await until(() => requested.length === 1);
    clock += 5; // a pick's usual round trip
    await answer(4); // 4 running (as one batch on one thread)
    clock += stepMs;
    feeder.stepsFinished(4); // all at once: the pick for the 4 free slots goes out with none running
    await until(() => requested.length === 2);
    clock += pickMs; // that pick's round trip
    await answer(4); // 4 running
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    expect(requested).toEqual(picks);
    expect(feeder.running).toBe(4);
    await stop();
  });

  it('counts a round of quick steps once: the picks after it, with nothing run since, claim nothing ahead', async () => {
    let clock = 0;
    const { feeder, requested, answer, stop } = answeredFeeder(4, 20, () => clock);
    feeder.start();
    await until(() => requested.length === 1);
    clock += 5;
    await answer(4);
    clock += 2.5;
    feeder.stepsFinished(4); // quick, all at once: the next pick may bring a round ahead
    await until(() => requested.length === 2);
    clock += 5;
    await answer(0); // nothing due after all
    await until(() => requested.length === 3); // asks for the 4 slots and the 4 ahead
    clock += 100; // a pause in which nothing ran
    await answer(0);
    await until(() => requested.length === 4);
    expect(requested).toEqual([4, 4, 8, 4]);
    await stop();
  });

  it('gives back a claimed row that waited past bufferWaitMs for a slot', async () => {
    vi.useFakeTimers();
    let calls = 0;
    const { feeder, state } = feederOver(0, 2, {
      claimAhead: 4,
      bufferWaitMs: 1_000,
      // The first pick fills both slots; one step finishes and a second pick goes out, while
      // it is out the other step finishes, so 4 rows (claimAhead) may wait ahead: the third
      // pick takes 5, one for the free slot and four for the buffer.
      claim: (limit) => {
        calls++;
        const rows = Array.from({ length: limit }, (_, i) => row(calls * 10 + i));
        if (calls === 2) feeder.stepsFinished(1);
        return Promise.resolve({ rows, full: calls < 3 });
      },
    });
    feeder.start();
    await vi.advanceTimersByTimeAsync(0);
    feeder.stepsFinished(1);
    await vi.advanceTimersByTimeAsync(0);
    expect({ calls, buffered: feeder.buffered }).toEqual({ calls: 3, buffered: 4 });
    await vi.advanceTimersByTimeAsync(999);
    expect(state.givenBack).toEqual([]);
    await vi.advanceTimersByTimeAsync(2);
    expect({ givenBack: state.givenBack, buffered: feeder.buffered }).toEqual({
      givenBack: ['31', '32', '33', '34'],
      buffered: 0,
    });
    // Counted as results to commit until their releases are committed: 2 running, 2 results
    // and the 4 given-back rows waiting for their commit.
    expect({ running: feeder.running, inFlight: feeder.inFlight }).toEqual({ running: 2, inFlight: 8 });
    await feeder.stop();
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
    feeder.stepsFinished(2);
    feeder.committed(2);
    feeder.wakeIn(1);
    await vi.advanceTimersByTimeAsync(MAX_TIMER_MS);
    expect(state).toMatchObject({ requested: [2], dispatched: 2 });
  });
});

describe('feederLimits', () => {
  it('claims ahead 16 × the concurrency by default, picks the slots and the rows ahead together, and keeps what is given', () => {
    expect(feederLimits({ concurrency: 16 })).toEqual({
      claimAhead: 256,
      batchSize: 272,
      maxUncommitted: 544,
    });
    expect(feederLimits({ concurrency: 64 })).toEqual({
      claimAhead: 1_000,
      batchSize: 1_000,
      maxUncommitted: 2_128,
    });
    expect(feederLimits({ concurrency: 500 })).toEqual({
      claimAhead: 1_000,
      batchSize: 1_000,
      maxUncommitted: 3_000,
    });
    expect(feederLimits({ concurrency: 16, claimAhead: 0 })).toEqual({
      claimAhead: 0,
      batchSize: 16,
      maxUncommitted: 32,
    });
    expect(feederLimits({ concurrency: 16, batchSize: 500, claimAhead: 8 })).toEqual({
      claimAhead: 8,
      batchSize: 500,
      maxUncommitted: 500,
    });
  });
});

describe('run-ahead', () => {
  const ahead = { id: '7', kind: 'next', step: 't', state: '{"a":1}', delayMs: 0, inline: true } as const;

  it('continues a next that asked for it on the next claim token, at the new step and state', () => {
    const claimed = { ...row(7), claim: '41', attempt: 3, awaiting: ['go'], timed_out: true, inbox: '[]' };
    expect(continuationOf(claimed, ahead)).toEqual({
      ...claimed,
      claim: '42',
      step: 't',
      state: '{"a":1}',
      attempt: 0,
      awaiting: null,
      timed_out: false,
      joined: false,
      inbox: null,
      children: null,
    });
    // The key the row holds may be named again: its slot stays held.
    expect(
      continuationOf({ ...claimed, concurrency_key: 'k' }, { ...ahead, concurrencyKey: 'k' }),
    ).not.toBeNull();
  });

  it('sends back to the queue what the pick must admit, or what did not ask', () => {
    const claimed = row(7);
    expect(continuationOf(claimed, { ...ahead, inline: false })).toBeNull();
    expect(continuationOf(claimed, { id: '7', kind: 'next', step: 't', state: '{}', delayMs: 0 })).toBeNull();
    expect(continuationOf(claimed, { ...ahead, delayMs: 5 })).toBeNull();
    expect(
      continuationOf(claimed, { ...ahead, rate: { limit: 'l', partition: null, weight: 1 } }),
    ).toBeNull();
    expect(continuationOf(claimed, { ...ahead, concurrencyKey: 'k' })).toBeNull();
    expect(
      continuationOf({ ...claimed, concurrency_key: 'k' }, { ...ahead, concurrencyKey: null }),
    ).toBeNull();
    expect(continuationOf(claimed, { id: '7', kind: 'retry', state: '{}', delayMs: 0 })).toBeNull();
  });

  it('starts continuations before buffered rows, and gives them back when stopping', async () => {
    vi.useFakeTimers();
    const started: string[] = [];
    const { feeder, state } = feederOver(0, 1, {
      dispatch: (rows) => void started.push(...rows.map((r) => r.id)),
      // One slot: row 1 starts, row 2 waits in the buffer.
      claim: () => Promise.resolve({ rows: [row(1), row(2)], full: false }),
    });
    feeder.start();
    await vi.advanceTimersByTimeAsync(0);
    expect({ started, buffered: feeder.buffered }).toEqual({ started: ['1'], buffered: 1 });
    // Another step's outcome ran ahead and committed while row 1 runs: it waits, first in line.
    feeder.resume([{ ...row(7), claim: '2' }]);
    expect(feeder.buffered).toBe(2);
    feeder.stepsFinished(1);
    await vi.advanceTimersByTimeAsync(0);
    expect(started).toEqual(['1', '7']);
    await feeder.stop();
    expect(state.givenBack).toEqual(['2']);
    // Committed after the stop: given back at once, never started.
    feeder.resume([{ ...row(8), claim: '2' }]);
    expect({ givenBack: state.givenBack, started }).toEqual({ givenBack: ['2', '8'], started: ['1', '7'] });
  });
});
