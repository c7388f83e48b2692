/**
 * The engine loop's statements, driven directly: the pick's plan, the claim guard on
 * outcomes, lease extension, release and reaping.
 */
import { describe, expect, it } from 'vitest';
import { Flusher, type FlushEntry } from '../runtime/flusher.js';
import type { Queryable } from '../runtime/sql/db.js';
import { statement } from '../runtime/sql/db.js';
import { CLAIM_BATCH_SQL, claimBatch } from '../runtime/sql/claim.js';
import { heartbeat, findExpiredLeases, releaseClaims } from '../runtime/sql/loop.js';
import { ATTEMPT, flushOutcomes } from '../runtime/sql/flush.js';
import { toOutcomeRow } from '../runtime/commit.js';
import { reapClaims } from '../cluster/reaper.js';
import { MachineRegistry } from '../runtime/registry.js';
import { registerNode } from '../runtime/sql/nodes.js';
import { leaderLockKey, releaseLeaderLock, tryLeaderLock } from '../runtime/sql/leader.js';
import { useTestSchema } from './support/db.js';
import { type PlanNode, explainRolledBack } from './support/plan.js';

const db = useTestSchema('loop');
const T = (): string => `"${db.schema}".gen_durable`;

/** Index or table pages a plan node read (from the cache or not). */
const pagesRead = (n: PlanNode): number => (n['Shared Hit Blocks'] ?? 0) + (n['Shared Read Blocks'] ?? 0);

/** `EXPLAIN (ANALYZE, BUFFERS)` of the pick of `limit` rows of `queue`, rolled back: its nodes. */
async function explainPick(queue: string, limit: number): Promise<PlanNode[]> {
  const stmt = statement(db.schema, 'claim', CLAIM_BATCH_SQL);
  return (await explainRolledBack(db.pool, stmt.text, [queue, limit, 'explain', 30_000, null])).plan;
}

async function seed(
  queue: string,
  rows: Array<{ status?: string; priority?: number; delaySec?: number }>,
): Promise<string[]> {
  const { rows: ids } = await db.pool.query<{ id: string }>(
    // Ids returned in the order of `rows` (the ordinal travels in the state).
    `WITH ins AS (
       INSERT INTO ${T()} (fsm, step, state, queue, status, priority, eligible_at, max_attempts)
       SELECT 'm', 's', jsonb_build_object('n', n), $1, s::"${db.schema}".gen_durable_status, p,
              now() + d * interval '1 second', 3
       FROM unnest($2::text[], $3::int[], $4::int[]) WITH ORDINALITY AS u(s, p, d, n)
       ORDER BY n
       RETURNING id, (state->>'n')::int AS n
     )
     SELECT id::text FROM ins ORDER BY n`,
    [
      queue,
      rows.map((r) => r.status ?? 'runnable'),
      rows.map((r) => r.priority ?? 0),
      rows.map((r) => r.delaySec ?? -1),
    ],
  );
  return ids.map((r) => r.id);
}

describe('claimBatch', () => {
  // Seeded in one statement, so rows with the same delay share one eligible_at (now()) and only
  // the id breaks their tie. Named by letter; the expected claim order is the pick's order.
  async function seedUrgency(queue: string): Promise<Record<string, string>> {
    const rows = {
      a: { priority: 1, delaySec: -10 },
      b: { priority: 0, delaySec: -1 },
      c: { priority: 0, delaySec: -5 },
      d: { priority: 0, delaySec: -5 }, // ties with c on (priority, eligible_at): c has the lower id
      h: { priority: -2, delaySec: -1 }, // most urgent priority, yet the latest due
      i: { priority: 1, delaySec: -20 },
      future: { priority: -3, delaySec: 3600 },
      done: { status: 'done', priority: -5 },
      parked: { status: 'awaiting_signal', priority: -5 },
      children: { status: 'awaiting_children', priority: -5 },
    };
    const ids = await seed(queue, Object.values(rows));
    const byName = Object.fromEntries(Object.keys(rows).map((name, i) => [name, ids[i]!]));
    // A due, most urgent row of another queue: never claimed for this one.
    await seed(`${queue}-other`, [{ priority: -10, delaySec: -100 }]);
    return byName;
  }

  const claim = (queue: string, limit: number, nodeId = 'n1') =>
    claimBatch(db.pool, db.schema, { queue, limit, nodeId, leaseMs: 30_000 });

  it('claims due runnable rows in (priority, eligible_at, id) order, skipping future, parked, finished and other queues', async () => {
    const ids = await seedUrgency('order');
    const expected = ['h', 'c', 'd', 'b', 'i', 'a'].map((n) => ids[n]!);
    // One row per claim: each claim takes the most urgent row left, so the sequence is the order.
    const sequence: string[] = [];
    for (let k = 0; k < expected.length; k++) {
      const claimed = await claim('order', 1);
      expect(claimed, `claim ${k}`).toHaveLength(1);
      sequence.push(claimed[0]!.id);
    }
    expect(sequence).toEqual(expected);
    expect(await claim('order', 10)).toEqual([]);
    const { rows } = await db.pool.query<{
      id: string;
      status: string;
      locked_by: string | null;
      claim: string;
    }>(
      `SELECT id::text, status::text, locked_by, claim::text FROM ${T()} WHERE queue LIKE 'order%' ORDER BY id`,
    );
    const executing = rows.filter((r) => r.status === 'executing');
    expect(executing.map((r) => r.id).sort()).toEqual([...expected].sort());
    expect(executing.every((r) => r.locked_by === 'n1' && r.claim === '1')).toBe(true);
    expect(rows.filter((r) => r.status !== 'executing').map((r) => r.locked_by)).toEqual(
      Array(rows.length - executing.length).fill(null),
    );
  });

  it('a batch larger than the due set claims exactly the due rows of its queue', async () => {
    const ids = await seedUrgency('all');
    const claimed = await claim('all', 50);
    expect(claimed.map((c) => c.id).sort()).toEqual(
      ['h', 'c', 'd', 'b', 'i', 'a'].map((n) => ids[n]!).sort(),
    );
  });

  it('takes exactly the most urgent rows when the batch is smaller than the due set', async () => {
    const ids = await seedUrgency('urgent');
    // Crosses a priority boundary and splits a priority's rows, including an id tie.
    expect((await claim('urgent', 2)).map((c) => c.id).sort()).toEqual([ids.h, ids.c].sort());
    expect((await claim('urgent', 3)).map((c) => c.id).sort()).toEqual([ids.d, ids.b, ids.i].sort());
    expect((await claim('urgent', 3)).map((c) => c.id)).toEqual([ids.a]);
  });

  it('skips rows another picker holds locked, without waiting for them', async () => {
    const ids = await seedUrgency('locked');
    const holder = await db.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM ${T()} WHERE id = ANY($1::bigint[]) FOR UPDATE`, [[ids.h, ids.c]]);
      expect((await claim('locked', 2)).map((c) => c.id).sort()).toEqual([ids.d, ids.b].sort());
      await holder.query('ROLLBACK');
    } finally {
      holder.release();
    }
    expect((await claim('locked', 2)).map((c) => c.id).sort()).toEqual([ids.h, ids.c].sort());
  }, 10_000);

  it('plans as index range scans that stop at the batch: no sort, no scan of future or finished rows', async () => {
    // A large table: many finished rows, many future rows at the most urgent priority, a few due rows.
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, status, priority, eligible_at)
       SELECT 'm', 's', '{}', 'plan', CASE WHEN g % 2 = 0 THEN 'done' ELSE 'runnable' END::"${db.schema}".gen_durable_status,
              CASE WHEN g % 2 = 0 THEN 0 ELSE 0 END, now() + interval '1 hour'
       FROM generate_series(1, 20000) g`,
    );
    await seed(
      'plan',
      Array.from({ length: 300 }, (_, i) => ({ priority: 1 + (i % 3) })),
    );
    await db.pool.query(`ANALYZE ${T()}`);
    const all = await explainPick('plan', 50);
    expect(all.filter((n) => n['Node Type'] === 'Sort')).toEqual([]);
    expect(all.filter((n) => n['Node Type'] === 'Seq Scan')).toEqual([]);
    const pickScans = all.filter((n) => n['Index Name'] === 'gen_durable_pick');
    expect(pickScans.length).toBeGreaterThan(0);
    // Rows read through the pick index: the batch plus one probe per distinct priority
    // walked — nowhere near the 10,000 future rows or the 10,000 finished ones.
    const read = pickScans.reduce((sum, n) => sum + (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1), 0);
    expect(read).toBeLessThanOrEqual(50 + 10);
    // Rows skipped inside an index scan do not show as rows, but the pages they sit on do:
    // a plain ORDER BY over the index walks the 10,000 future rows of priority 0 (~66
    // pages here); the pick touches a handful.
    expect(pickScans.reduce((sum, n) => sum + pagesRead(n), 0)).toBeLessThanOrEqual(30);
    const update = all.find((n) => n['Node Type'] === 'ModifyTable');
    expect(update?.['Actual Rows']).toBe(50);
  });

  it("starts a priority's scan at its first runnable row, not at the index entries of rows already claimed", async () => {
    // Claimed rows leave their entries in gen_durable_pick, dead, until vacuum removes them.
    await db.pool.query(`ALTER TABLE ${T()} SET (autovacuum_enabled = false)`);
    try {
      await db.pool.query(
        `INSERT INTO ${T()} (fsm, step, state, queue, eligible_at)
         SELECT 'm', 's', '{}', 'claimed-ahead', now() - interval '1 hour' + g * interval '1 millisecond'
         FROM generate_series(1, 6000) g`,
      );
      for (let i = 0; i < 5; i++) {
        const claimed = await claimBatch(db.pool, db.schema, {
          queue: 'claimed-ahead',
          limit: 1_000,
          nodeId: 'ahead',
          leaseMs: 60_000,
        });
        expect(claimed).toHaveLength(1_000);
      }
      const all = await explainPick('claimed-ahead', 10);
      const pickScans = all.filter((n) => n['Index Name'] === 'gen_durable_pick');
      // The priority probe steps over the 5,000 claimed rows' entries (~30 pages)...
      const probe = pickScans.filter((n) => !n['Index Cond']?.includes('now()'));
      expect(Math.max(...probe.map(pagesRead))).toBeGreaterThanOrEqual(15);
      // ...and the scan that takes the batch starts where the probe found the first runnable row.
      const batch = pickScans.filter((n) => n['Index Cond']?.includes('now()'));
      expect(batch).toHaveLength(1);
      expect(batch[0]!['Actual Rows']).toBe(10);
      expect(pagesRead(batch[0]!)).toBeLessThanOrEqual(4);
    } finally {
      await db.pool.query(`ALTER TABLE ${T()} RESET (autovacuum_enabled)`);
    }
  });
});

describe('flushOutcomes', () => {
  it('applies an outcome only while the claim holds: a stale outcome commits nothing, and is reported', async () => {
    const [id] = await seed('stale', [{}]);
    const [first] = await claimBatch(db.pool, db.schema, {
      queue: 'stale',
      limit: 1,
      nodeId: 'old',
      leaseMs: 30_000,
    });
    // The lease is lost (released here; the reaper does the same) and another node claims the row.
    await releaseClaims(db.pool, db.schema, 'old', [id!]);
    const [second] = await claimBatch(db.pool, db.schema, {
      queue: 'stale',
      limit: 1,
      nodeId: 'new',
      leaseMs: 30_000,
    });
    expect(second!.claim).not.toBe(first!.claim);
    const outcome = {
      status: 'done' as const,
      step: null,
      state: null,
      attempt: ATTEMPT.keep,
      delayMs: null,
      result: '"stale"',
      lastError: null,
      error: null,
    };
    const stale = { id, watched: false, inbox: false, queue: null, kind: 'stale' };
    expect(
      await flushOutcomes(db.pool, db.schema, 'old', [{ ...outcome, id: id!, claim: first!.claim }]),
    ).toEqual([stale]);
    // Right node, old claim token: still nothing.
    expect(
      await flushOutcomes(db.pool, db.schema, 'new', [{ ...outcome, id: id!, claim: first!.claim }]),
    ).toEqual([stale]);
    const { rows } = await db.pool.query(`SELECT status::text, result FROM ${T()} WHERE id = $1`, [id]);
    expect(rows[0]).toEqual({ status: 'executing', result: null });
    // The current claim commits, once: an applied row nobody watches is not returned.
    const current = { ...outcome, id: id!, claim: second!.claim, result: '"fresh"' };
    expect(await flushOutcomes(db.pool, db.schema, 'new', [current])).toEqual([]);
    expect(await flushOutcomes(db.pool, db.schema, 'new', [current])).toEqual([stale]);
    const { rows: after } = await db.pool.query(`SELECT status::text, result FROM ${T()} WHERE id = $1`, [
      id,
    ]);
    expect(after[0]).toEqual({ status: 'done', result: 'fresh' });
  });

  it('commits a next run ahead as a HOT update with the row still claimed and its token bumped: sent again, it is stale', async () => {
    const [id] = await seed('ahead', [{}]);
    const [claimed] = await claimBatch(db.pool, db.schema, {
      queue: 'ahead',
      limit: 1,
      nodeId: 'n',
      leaseMs: 30_000,
    });
    const read = async () =>
      (
        await db.pool.query(
          `SELECT status::text, step, state, attempt, locked_by, claim::text, lease_expires_at FROM ${T()} WHERE id = $1`,
          [id],
        )
      ).rows[0] as Record<string, unknown>;
    const before = await read();
    const ahead = toOutcomeRow({
      id: id!,
      claim: claimed!.claim,
      result: { id: id!, kind: 'next', step: 'b', state: '{"x":1}', delayMs: 0, inline: true },
      continuation: claimed!,
    });
    // In a transaction of its own, to read what the update wrote: no index entry (HOT).
    const conn = await db.pool.connect();
    try {
      await conn.query('BEGIN');
      // This backend's counts not yet reported (earlier transactions' too): compare.
      const counts = async () =>
        (
          await conn.query<{ updated: number; hot: number }>(
            `SELECT n_tup_upd::int AS updated, n_tup_hot_upd::int AS hot FROM pg_stat_xact_user_tables
             WHERE relid = '${T()}'::regclass`,
          )
        ).rows[0]!;
      const was = await counts();
      expect(await flushOutcomes(conn, db.schema, 'n', [ahead])).toEqual([]);
      const now = await counts();
      expect({ updated: now.updated - was.updated, hot: now.hot - was.hot }).toEqual({ updated: 1, hot: 1 });
      await conn.query('COMMIT');
    } finally {
      conn.release();
    }
    const token = String(BigInt(claimed!.claim) + 1n);
    expect(await read()).toEqual({
      ...before,
      status: 'executing',
      step: 'b',
      state: { x: 1 },
      claim: token,
    });
    // Sent again (a retry after a lost reply): its token no longer holds, nothing applies twice.
    expect(await flushOutcomes(db.pool, db.schema, 'n', [ahead])).toEqual([
      { id, watched: false, inbox: false, queue: null, kind: 'stale' },
    ]);
    // The continuation's outcome commits on the new token, and releases the claim.
    const finished = toOutcomeRow({ id: id!, claim: token, result: { id: id!, kind: 'done', result: '1' } });
    expect(await flushOutcomes(db.pool, db.schema, 'n', [finished])).toEqual([]);
    expect(await read()).toMatchObject({ status: 'done', locked_by: null, lease_expires_at: null });
  });

  it('sends and sets only the columns its outcomes change: plain `done`s send no step, state, delay or error', async () => {
    const ids = await seed('narrow', [{}, {}, {}, {}]);
    await db.pool.query(
      `UPDATE ${T()} SET last_error = 'earlier', errors = '[{"error": "earlier"}]' WHERE id = $1`,
      [ids[0]],
    );
    const before = await db.pool.query<{ id: string; state: unknown; eligible_at: Date }>(
      `SELECT id::text, state, eligible_at FROM ${T()} WHERE queue = 'narrow' ORDER BY id`,
    );
    const claimed = await claimBatch(db.pool, db.schema, {
      queue: 'narrow',
      limit: 4,
      nodeId: 'n',
      leaseMs: 30_000,
    });
    // In the order of `ids` (the claim returns its rows in no particular order).
    const tokens = new Map(claimed.map((c) => [c.id, c.claim]));
    const row = (i: number) => ({ id: ids[i]!, claim: tokens.get(ids[i]!)! });
    const sent: Array<{ text: string; values: unknown[] }> = [];
    const recording: Queryable = {
      query: (config) => {
        sent.push({ text: config.text, values: config.values ?? [] });
        return db.pool.query(config as never);
      },
    };
    const done = (i: number) =>
      toOutcomeRow({ ...row(i), result: { id: ids[i]!, kind: 'done', result: `${i}` } });
    expect(await flushOutcomes(recording, db.schema, 'n', [done(0), done(1)])).toEqual([]);
    // The node id, then id, claim, status, attempt and result: nothing for what no outcome changes.
    expect(sent[0]!.values).toHaveLength(6);
    expect(sent[0]!.text).not.toMatch(/jsonb_array_elements|eligible_at =|state =|last_error =/);
    const after = await db.pool.query<{
      id: string;
      state: unknown;
      eligible_at: Date;
      result: unknown;
      last_error: string | null;
      errors: unknown[];
    }>(
      `SELECT id::text, state, eligible_at, result, last_error, errors FROM ${T()} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [ids.slice(0, 2)],
    );
    expect(after.rows).toEqual([
      { ...before.rows[0], result: 0, last_error: 'earlier', errors: [{ error: 'earlier' }] },
      { ...before.rows[1], result: 1, last_error: null, errors: [] },
    ]);
    // A retry in the batch brings the error columns (and the delay) back, for it alone.
    const retry = toOutcomeRow({
      ...row(2),
      result: { id: ids[2]!, kind: 'retry', state: '{"y":2}', delayMs: 60_000, error: 'failed once' },
    });
    expect(await flushOutcomes(recording, db.schema, 'n', [retry, done(3)])).toEqual([]);
    expect(sent[1]!.text).toMatch(/jsonb_array_elements/);
    const retried = await db.pool.query<{
      id: string;
      last_error: string;
      errors: Array<{ error: string }>;
      state: unknown;
      later: boolean;
    }>(
      `SELECT id::text, last_error, errors, state, eligible_at > now() + interval '50 seconds' AS later
       FROM ${T()} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [ids.slice(2)],
    );
    expect(retried.rows[0]).toMatchObject({ state: { y: 2 }, later: true });
    expect(retried.rows[0]!.errors.map((e) => e.error)).toEqual(['failed once']);
    expect(retried.rows[1]).toMatchObject({
      last_error: null,
      errors: [],
      state: before.rows[3]!.state,
      later: false,
    });
  });

  it('commits a flush of any size in one statement', async () => {
    const ids = await seed(
      'bounded',
      Array.from({ length: 600 }, () => ({})),
    );
    const claimed = await claimBatch(db.pool, db.schema, {
      queue: 'bounded',
      limit: 600,
      nodeId: 'n',
      leaseMs: 30_000,
    });
    expect(claimed).toHaveLength(600);
    const statements: string[] = [];
    const counting: Queryable = {
      query: (config) => {
        statements.push(config.text);
        return db.pool.query(config as never);
      },
    };
    const applied: string[] = [];
    const flusher = new Flusher({
      db: counting,
      schema: db.schema,
      nodeId: 'n',
      maxBatch: 1_000,
      retryLimitMs: 60_000,
      onAbandoned: (_entries, e) => {
        throw e;
      },
      onFlushed: (_entries, committed) => applied.push(...committed.applied.keys()),
      onError: (e) => {
        throw e;
      },
    });
    flusher.start();
    claimed.forEach((row, i) => {
      const entry: FlushEntry = {
        id: row.id,
        claim: row.claim,
        queue: 'bounded',
        result:
          i % 3 === 0
            ? { id: row.id, kind: 'done', result: '1' }
            : i % 3 === 1
              ? { id: row.id, kind: 'next', step: 's2', state: '{"x":1}', delayMs: 0 }
              : { id: row.id, kind: 'retry', state: '{"y":2}', delayMs: 1000, error: 'failed once' },
      };
      flusher.push(entry);
    });
    await flusher.drained();
    await flusher.stop();
    expect(statements).toHaveLength(1);
    expect(applied.sort()).toEqual([...ids].sort());
    const { rows } = await db.pool.query<{ status: string; n: number }>(
      `SELECT status::text || ':' || step || ':' || attempt AS status, count(*)::int AS n FROM ${T()}
       WHERE queue = 'bounded' GROUP BY 1 ORDER BY 1`,
    );
    expect(rows).toEqual([
      { status: 'done:s:0', n: 200 },
      { status: 'runnable:s2:0', n: 200 },
      { status: 'runnable:s:1', n: 200 },
    ]);
  });
});

describe('leases', () => {
  it('heartbeat extends every lease of the node in one statement', async () => {
    await registerNode(db.pool, db.schema, { id: 'hb', host: 'h', pid: 1, queues: ['lease'] });
    await seed('lease', [{}, {}, {}]);
    const claimed = await claimBatch(db.pool, db.schema, {
      queue: 'lease',
      limit: 3,
      nodeId: 'hb',
      leaseMs: 1_000,
    });
    await seed('lease', [{}]);
    const [other] = await claimBatch(db.pool, db.schema, {
      queue: 'lease',
      limit: 1,
      nodeId: 'other',
      leaseMs: 1_000,
    });
    // Even handed another node's claim, the heartbeat extends only its own.
    const ids = [...claimed.map((c) => c.id), other!.id];
    const beat = (nodeId: string, leaderKey?: bigint) =>
      heartbeat(db.pool, db.schema, { nodeId, leaseMs: 60_000, ids, leaderKey });
    expect(await beat('hb')).toEqual({ alive: true, extended: 3, leaderPid: null });
    const { rows } = await db.pool.query<{ locked_by: string; extended: boolean }>(
      `SELECT locked_by, lease_expires_at > now() + interval '50 seconds' AS extended FROM ${T()}
       WHERE queue = 'lease' ORDER BY locked_by, id`,
    );
    expect(rows).toEqual([
      { locked_by: 'hb', extended: true },
      { locked_by: 'hb', extended: true },
      { locked_by: 'hb', extended: true },
      { locked_by: 'other', extended: false },
    ]);
    expect(await beat('unknown-node')).toEqual({ alive: false, extended: 0, leaderPid: null });
    // It names the backend holding the leader lock, and nobody when the lock is free.
    const key = leaderLockKey('any', db.schema);
    const holder = await db.pool.connect();
    try {
      expect(await beat('hb', key)).toMatchObject({ leaderPid: null });
      expect(await tryLeaderLock(holder, key)).toBe(true);
      const { rows: pid } = await holder.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      expect(await beat('hb', key)).toMatchObject({ leaderPid: pid[0]!.pid });
      expect(await beat('hb', leaderLockKey('other', db.schema))).toMatchObject({ leaderPid: null });
    } finally {
      await releaseLeaderLock(holder, key);
      holder.release();
    }
  });

  it('reaps expired leases with attempt + 1, failing rows whose attempts are spent', async () => {
    const [a, b] = await seed('reap', [{}, {}]);
    await db.pool.query(`UPDATE ${T()} SET attempt = 2 WHERE id = $1`, [b]);
    await claimBatch(db.pool, db.schema, { queue: 'reap', limit: 2, nodeId: 'dead', leaseMs: 1 });
    await db.pool.query(
      `UPDATE ${T()} SET lease_expires_at = now() - interval '1 second' WHERE locked_by = 'dead'`,
    );
    const [live] = await seed('reap-live', [{}]);
    await claimBatch(db.pool, db.schema, { queue: 'reap-live', limit: 1, nodeId: 'alive', leaseMs: 60_000 });
    const found = await findExpiredLeases(db.pool, db.schema, 100);
    const reaped = await reapClaims(db.pool, db.schema, new MachineRegistry([]), found, {
      reason: 'lease expired',
      expired: true,
    });
    expect(
      await db.pool.query(`SELECT status::text, attempt, locked_by FROM ${T()} WHERE id = $1`, [live]),
    ).toMatchObject({ rows: [{ status: 'executing', attempt: 0, locked_by: 'alive' }] });
    expect(reaped.map((r) => `${r.id}:${r.status}`).sort()).toEqual([`${a}:runnable`, `${b}:failed`].sort());
    const { rows } = await db.pool.query<{
      id: string;
      attempt: number;
      last_error: string;
      locked_by: string | null;
    }>(`SELECT id::text, attempt, last_error, locked_by FROM ${T()} WHERE queue = 'reap' ORDER BY id`);
    expect(rows.map((r) => r.attempt)).toEqual([1, 3]);
    expect(rows.every((r) => r.locked_by === null && /lease expired/.test(r.last_error))).toBe(true);
  });

  it('release gives claims back without charging an attempt', async () => {
    const ids = await seed('release', [{}, {}, {}]);
    await db.pool.query(`UPDATE ${T()} SET attempt = 1 WHERE id = $1`, [ids[1]]);
    await claimBatch(db.pool, db.schema, { queue: 'release', limit: 3, nodeId: 'leaving', leaseMs: 30_000 });
    const [kept] = await seed('release', [{}]);
    await claimBatch(db.pool, db.schema, { queue: 'release', limit: 1, nodeId: 'staying', leaseMs: 30_000 });
    // By id: only the named claim; then all the node's claims; never another node's.
    expect(await releaseClaims(db.pool, db.schema, 'leaving', [ids[0]!, kept!])).toEqual([
      { id: ids[0], queue: 'release' },
    ]);
    const released = await releaseClaims(db.pool, db.schema, 'leaving', null);
    expect(released.map((r) => r.id).sort()).toEqual([ids[1], ids[2]].sort());
    const { rows } = await db.pool.query(
      `SELECT id::text, status::text, step, attempt, locked_by, lease_expires_at IS NULL AS no_lease
       FROM ${T()} WHERE queue = 'release' ORDER BY id`,
    );
    expect(rows).toEqual([
      { id: ids[0], status: 'runnable', step: 's', attempt: 0, locked_by: null, no_lease: true },
      { id: ids[1], status: 'runnable', step: 's', attempt: 1, locked_by: null, no_lease: true },
      { id: ids[2], status: 'runnable', step: 's', attempt: 0, locked_by: null, no_lease: true },
      { id: kept, status: 'executing', step: 's', attempt: 0, locked_by: 'staying', no_lease: false },
    ]);
  });
});
