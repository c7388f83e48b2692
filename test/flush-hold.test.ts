/**
 * The flusher's hold: while rows claimed on the node are still to report, the next flush
 * waits for their results (or for as long as the last flush took), so they commit together.
 * The first flush is made slow by a row lock held from another connection, which sets how
 * long a hold may last.
 */
import { describe, expect, it } from 'vitest';
import { Flusher, type FlushEntry } from '../runtime/flusher.js';
import { type ClaimedRow, claimBatch } from '../runtime/sql/claim.js';
import { eventually, seedRunnable, useTestSchema } from './support/db.js';

const db = useTestSchema('fhold');
const NODE = 'hold-node';

async function claimRows(queue: string, n: number): Promise<ClaimedRow[]> {
  await seedRunnable(db, queue, n);
  return claimBatch(db.pool, db.schema, { queue, limit: n, nodeId: NODE, leaseMs: 60_000 });
}

const done = (row: ClaimedRow): FlushEntry => ({
  id: row.id,
  claim: row.claim,
  queue: 'q',
  result: { id: row.id, kind: 'done', result: 'null' },
});

/**
 * A flusher whose first flush (of `first`) waits on a row lock for `blockMs`; `later` is
 * pushed while it waits. Returns the flusher and the batches it committed, as ids.
 */
async function slowStart(
  first: ClaimedRow,
  later: ClaimedRow,
  unreported: () => number,
  blockMs: number,
  onBatch: (ids: string[]) => void = () => undefined,
): Promise<{ flusher: Flusher; batches: string[][] }> {
  const blocker = await db.pool.connect();
  await blocker.query('BEGIN');
  await blocker.query(`SELECT 1 FROM "${db.schema}".gen_durable WHERE id = $1 FOR UPDATE`, [first.id]);
  const batches: string[][] = [];
  const flusher = new Flusher({
    db: db.pool,
    schema: db.schema,
    nodeId: NODE,
    maxBatch: 1_000,
    retryLimitMs: 60_000,
    unreported,
    maxHoldMs: 60_000,
    onFlushed: (entries) => {
      const ids = entries.map((e) => e.id);
      batches.push(ids);
      onBatch(ids);
    },
    onAbandoned: (_entries, e) => {
      throw e;
    },
    onError: (e) => {
      throw e;
    },
  });
  flusher.start();
  flusher.push(done(first));
  // The flush is waiting on the lock once Postgres shows it so.
  await eventually(async () => {
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity
       WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
      [`%UPDATE "${db.schema}".gen_durable%`],
    );
    return rows[0]!.n > 0 ? true : undefined;
  }, 'the first flush to wait on the lock');
  flusher.push(done(later));
  setTimeout(() => void blocker.query('COMMIT').finally(() => blocker.release()), blockMs);
  return { flusher, batches };
}

/** Pushes `entries` one per turn of the event loop, calling `pushed` after each. */
function pushApart(flusher: Flusher, entries: FlushEntry[], pushed: () => void): void {
  const [next, ...rest] = entries;
  if (!next) return;
  setImmediate(() => {
    flusher.push(next);
    pushed();
    pushApart(flusher, rest, pushed);
  });
}

describe('a flush held for the results of rows claimed on the node', () => {
  it('waits for them and commits them in one batch', async () => {
    const rows = await claimRows('q-target', 6);
    const [first, second, ...rest] = rows as [ClaimedRow, ClaimedRow, ...ClaimedRow[]];
    let reporting = rest.length;
    const { flusher, batches } = await slowStart(
      first,
      second,
      () => reporting,
      1_000,
      (ids) => {
        // The first flush is back: the rest report one per turn, well inside the hold.
        if (ids.includes(first.id)) pushApart(flusher, rest.map(done), () => reporting--);
      },
    );
    await eventually(
      () => Promise.resolve(batches.flat().length === rows.length ? true : undefined),
      'every outcome committed',
    );
    await flusher.stop();
    expect(batches).toEqual([[first.id], [second.id, ...rest.map((r) => r.id)]]);
  });

  it('goes out after as long as the last flush took when the results do not come', async () => {
    const [first, second] = (await claimRows('q-deadline', 2)) as [ClaimedRow, ClaimedRow];
    const { flusher, batches } = await slowStart(first, second, () => 100, 300);
    await flusher.drained();
    await flusher.stop();
    expect(batches).toEqual([[first.id], [second.id]]);
    const { rows } = await db.pool.query<{ status: string }>(
      `SELECT status::text AS status FROM "${db.schema}".gen_durable WHERE id = ANY ($1::bigint[])`,
      [[first.id, second.id]],
    );
    expect(rows.map((r) => r.status)).toEqual(['done', 'done']);
  });
});
