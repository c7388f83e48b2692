/**
 * The thread watchdog's blame when steps block after an await or in onError, and flushes
 * that fail for their values without a class 22/23 SQLSTATE. Each test uses its own queue.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { BroadcastChannel } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { Flusher, type FlushEntry } from '../runtime/flusher.js';
import { type ClaimedRow, claimBatch } from '../runtime/sql/claim.js';
import {
  all,
  contBlocker,
  hangingOnError,
  politeSleeper,
  syncBlocker,
} from './fixtures/watchdog-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('wdflush');
const { join } = useNodes(db);

async function row(id: string): Promise<{ status: string; attempt: number; errors: unknown[] }> {
  const { rows } = await db.pool.query<{ status: string; attempt: number; errors: unknown[] }>(
    `SELECT status::text AS status, attempt, errors FROM "${db.schema}".gen_durable WHERE id = $1`,
    [id],
  );
  return rows[0]!;
}

function recordStops(): { kinds: string[]; done: () => void } {
  const kinds: string[] = [];
  const onStop = (m: unknown): void => {
    const e = m as { machine: string; outcome: string };
    kinds.push(`${e.machine}:${e.outcome}`);
  };
  subscribe('gen_durable:step:stop', onStop);
  return { kinds, done: () => unsubscribe('gen_durable:step:stop', onStop) };
}

describe('watchdog blame when the blocker blocks after an await', () => {
  it('an older batch on the same thread is not charged for a step that blocks in a continuation', async () => {
    const node = await join({
      machines: all,
      queues: { r2a: { concurrency: 8, threads: 1, batchSize: 1 } },
      timeoutGrace: 100,
    });
    const stops = recordStops();
    try {
      const sleeper = await node.client.insert(politeSleeper, { args: { ms: 250 }, queue: 'r2a' });
      await eventually(
        async () => ((await row(sleeper.id)).status === 'executing' ? true : undefined),
        'claim',
      );
      const blocker = await node.client.insert(contBlocker, { args: {}, queue: 'r2a' });
      const b = await node.client.waitFor(blocker.id, { timeout: '20s' });
      const s = await node.client.waitFor(sleeper.id, { timeout: '20s' });
      expect(b).toMatchObject({ status: 'done', result: 'unblocked' });
      // The sleeper did nothing wrong: it must not carry a timeout.
      expect(s).toMatchObject({ status: 'done', snapshot: { attempt: 0, errors: [] } });
      expect(stops.kinds).not.toContain('r2-cont-blocker:release');
    } finally {
      stops.done();
    }
  });

  it('a continuation blocker on a busy queue is eventually charged (no endless uncharged re-runs)', async () => {
    const node = await join({
      machines: all,
      queues: { r2b: { concurrency: 32, threads: 1, batchSize: 1 } },
      timeoutGrace: 100,
    });
    const stops = recordStops();
    let feeding = true;
    const feed = (async () => {
      while (feeding) {
        await node.client.insert(politeSleeper, { args: { ms: 150 }, queue: 'r2b' });
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 300));
      const blocker = await node.client.insert(contBlocker, { args: {}, queue: 'r2b' });
      await new Promise((r) => setTimeout(r, 8_000));
      const releases = stops.kinds.filter((k) => k === 'r2-cont-blocker:release').length;
      const innocentTimeouts = stops.kinds.filter((k) => k === 'r2-polite-sleeper:retry').length;
      const b = await row(blocker.id);
      expect({ blockerAttempt: b.attempt, releases, innocentTimeouts }).toEqual({
        blockerAttempt: 1,
        releases: 0,
        innocentTimeouts: 0,
      });
    } finally {
      feeding = false;
      await feed;
      stops.done();
    }
  });
});

describe('the retry round of a blamed step', () => {
  it('a blamed blocker is charged, even when its onError round lands on another blocked thread', async () => {
    const node = await join({
      machines: all,
      queues: { r2c: { concurrency: 4, threads: 2, batchSize: 2 } },
      timeoutGrace: 100,
    });
    // Every run that began on a thread, announced by the step itself before it blocks. A
    // step queued behind a blocked thread never began: it is released uncharged and runs
    // later, which is correct. A blamed step whose onError round was released instead of
    // charged would lose its failure and begin attempt 0 a second time.
    const runs = new Map<string, number[]>();
    const channel = new BroadcastChannel('gen-durable-test:r2-sync-blocker:runs');
    channel.onmessage = (m) => {
      const { id, attempt } = (m as { data: { id: string; attempt: number } }).data;
      runs.set(id, [...(runs.get(id) ?? []), attempt]);
    };
    try {
      const settled: Array<{ id: string; status: string; attempt: number }> = [];
      for (let round = 0; round < 3; round++) {
        const ids = await node.client.insertAll([
          { machine: syncBlocker, args: { i: 1 }, queue: 'r2c' },
          { machine: syncBlocker, args: { i: 2 }, queue: 'r2c' },
        ]);
        for (const { id } of ids) {
          const r = await node.client.waitFor(id, { timeout: '20s' });
          settled.push({ id, status: r.status, attempt: r.snapshot.attempt });
        }
      }
      // The announcement of the last run travels apart from its result: wait until it is in.
      await eventually(
        () => Promise.resolve(settled.every(({ id }) => runs.get(id)?.includes(1)) ? true : undefined),
        'the announcement of every attempt-1 run',
      );
      expect(settled.map(({ id, ...r }) => ({ ...r, runs: runs.get(id) }))).toEqual(
        Array(6).fill({ status: 'done', attempt: 1, runs: [0, 1] }),
      );
    } finally {
      channel.close();
    }
  });
});

/** Claims `n` fresh rows of `queue` for node `nodeId`. */
async function claimRows(queue: string, n: number, nodeId: string): Promise<ClaimedRow[]> {
  await db.pool.query(
    `INSERT INTO "${db.schema}".gen_durable (fsm, step, state, queue, max_attempts)
     SELECT 'm', 's', '{}'::jsonb, $1, 3 FROM generate_series(1, $2)`,
    [queue, n],
  );
  return claimBatch(db.pool, db.schema, { queue, limit: n, nodeId, leaseMs: 60_000 });
}

/**
 * Pushes `entries` into a fresh flusher; resolves with what was applied, or 'stalled' when
 * the same batch was retried (a second reported failure before anything applied) or `ms` passed.
 */
async function flushWithin(
  entries: FlushEntry[],
  nodeId: string,
  ms: number,
): Promise<{ applied: string[]; errors: string[] } | 'stalled'> {
  const applied: string[] = [];
  const errors: string[] = [];
  let retried = (): void => undefined;
  const flusher = new Flusher({
    db: db.pool,
    schema: db.schema,
    nodeId,
    maxBatch: 1_000,
    retryLimitMs: 60_000,
    onAbandoned: (_entries, e) => {
      throw e;
    },
    onFlushed: (_entries, committed) => applied.push(...committed.applied.keys()),
    onError: (e) => {
      errors.push(`${(e as { code?: string }).code ?? (e as Error).constructor.name}`);
      if (errors.length >= 2 && applied.length === 0) retried();
    },
  });
  flusher.start();
  for (const entry of entries) flusher.push(entry);
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    flusher.drained().then(() => ({ applied, errors })),
    new Promise<'stalled'>((resolve) => {
      timer = setTimeout(() => resolve('stalled'), ms);
      retried = () => resolve('stalled');
    }),
  ]);
  clearTimeout(timer);
  await flusher.stop();
  return outcome;
}

describe('flushes that fail for their values without a class 22/23 SQLSTATE', () => {
  it(
    'a state too large for jsonb (SQLSTATE 54000) fails that instance, not every outcome behind it',
    { timeout: 90_000 },
    async () => {
      const [bad, good] = await claimRows('r2-54000', 2, 'r2-n1');
      const huge = JSON.stringify({ s: 'x'.repeat(2 ** 28 + 16) });
      const outcome = await flushWithin(
        [
          {
            id: bad!.id,
            claim: bad!.claim,
            queue: 'r2-54000',
            result: { id: bad!.id, kind: 'next', step: 's', state: huge, delayMs: 0 },
          },
          {
            id: good!.id,
            claim: good!.claim,
            queue: 'r2-54000',
            result: { id: good!.id, kind: 'done', result: '1' },
          },
        ],
        'r2-n1',
        40_000, // each try ships 256 MB: a correct flusher needs ~20 s here
      );
      expect(outcome).not.toBe('stalled');
      expect((await row(good!.id)).status).toBe('done');
      expect((await row(bad!.id)).status).toBe('failed');
    },
  );

  it(
    'a batch whose states together exceed what pg can serialise (RangeError) still commits',
    { timeout: 90_000 },
    async () => {
      const rows = await claimRows('r2-range', 600, 'r2-n2');
      const state = JSON.stringify({ s: 'x'.repeat(1_000_000) }); // 1 MB each, 600 MB together
      const outcome = await flushWithin(
        rows.map((r) => ({
          id: r.id,
          claim: r.claim,
          queue: 'r2-range',
          result: { id: r.id, kind: 'next', step: 's', state, delayMs: 0 },
        })),
        'r2-n2',
        30_000, // ~12 s when the batch is split
      );
      expect(outcome === 'stalled' ? 'stalled' : outcome.applied.length).toBe(600);
    },
  );
});

describe('an onError hook that never settles', () => {
  it('does not hold its claim and its slot forever', async () => {
    const node = await join({
      machines: all,
      queues: { r2e: { concurrency: 2, threads: 1 } },
      timeoutGrace: 100,
    });
    const { id } = await node.client.insert(hangingOnError, { state: {}, queue: 'r2e' });
    await new Promise((r) => setTimeout(r, 5_000));
    expect({ status: (await row(id)).status, inFlight: node.inFlight('r2e') }).not.toEqual({
      status: 'executing',
      inFlight: 1,
    });
  });
});
