/**
 * Defects of the loop found by review, each driven to where it hurt: the heartbeat against
 * the flush (deadlock), the flush's plan with many rows in flight, errors that are neither
 * data errors nor transient, claims the node no longer runs, due times that were lost,
 * services restarted without an awaited stop, unbounded error text, the reaper's backoff.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { reapClaims } from '../cluster/reaper.js';
import { defineJob } from '../index.js';
import { DEFAULT_STEP_TIMEOUT_MS } from '../runtime/machine.js';
import { type FlushEntry, Flusher } from '../runtime/flusher.js';
import { MachineRegistry } from '../runtime/registry.js';
import { PeriodicService } from '../runtime/service.js';
import { type Queryable, statement } from '../runtime/sql/db.js';
import { isTransient } from '../runtime/sql/errors.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { findExpiredLeases, heartbeat, releaseClaims } from '../runtime/sql/loop.js';
import {
  type FlushShape,
  type OutcomeRow,
  flushOutcomeValues,
  flushOutcomes,
  flushSql,
  shapeOf,
} from '../runtime/sql/flush.js';
import { registerNode } from '../runtime/sql/nodes.js';
import { toOutcomeRow } from '../runtime/commit.js';
import { all, hugeError, plain } from './fixtures/loop-machines.js';
import { eventually, seedRunnable, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';
import { z } from 'zod';
import { type PlanNode, planNodes, removedBy } from './support/plan.js';

const db = useTestSchema('lh');
const { join, client } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;

const seed = (queue: string, n: number): Promise<void> => seedRunnable(db, queue, n, 'lh-plain');

function claim(queue: string, limit: number, nodeId: string): ReturnType<typeof claimBatch> {
  return claimBatch(db.pool, db.schema, { queue, limit, nodeId, leaseMs: 60_000 });
}

function nextOutcome(id: string, claimToken: string): FlushEntry {
  return {
    id,
    claim: claimToken,
    queue: 'q',
    result: { id, kind: 'next', step: 'perform', state: '{"i":1}', delayMs: 0 },
  };
}

describe('the heartbeat and the flush', () => {
  it('never deadlock: a 1,500-outcome flush beside heartbeats over 3,000 claims', async () => {
    await registerNode(db.pool, db.schema, { id: 'hb', host: 'h', pid: 1, queues: ['dl'] });
    await seed('dl', 3_000);
    const a = new pg.Pool({ connectionString: db.url, max: 1 });
    const b = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      for (let round = 0; round < 5; round++) {
        const claimed = await claim('dl', 3_000, 'hb');
        expect(claimed).toHaveLength(3_000);
        const ids = claimed.map((c) => c.id);
        // The flush takes every other row, in descending id order: the heartbeat walks ids
        // ascending, so the two lock shared rows in opposite orders.
        const outcomes = claimed
          .filter((_, i) => i % 2 === 0)
          .reverse()
          .map((c) => toOutcomeRow(nextOutcome(c.id, c.claim)));
        const [flushed, beats] = await Promise.all([
          flushOutcomes(a, db.schema, 'hb', outcomes),
          Promise.all(
            [0, 1, 2].map(() =>
              heartbeat(b, db.schema, { nodeId: 'hb', leaseMs: 60_000, ids, leaderKey: undefined }),
            ),
          ),
        ]);
        // Every outcome applied: none is reported stale (nor watched), and the rows moved on.
        expect(flushed).toEqual([]);
        const { rows: moved } = await db.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${db.schema}".gen_durable WHERE id = ANY ($1::bigint[]) AND status = 'runnable'`,
          [outcomes.map((o) => o.id)],
        );
        expect(moved[0]!.n).toBe(1_500);
        expect(beats.every((beat) => beat.alive)).toBe(true);
        await releaseClaims(db.pool, db.schema, 'hb', null);
      }
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('extends only the claims the node still runs', async () => {
    await registerNode(db.pool, db.schema, { id: 'some', host: 'h', pid: 1, queues: ['some'] });
    await seed('some', 3);
    const claimed = await claim('some', 3, 'some');
    await db.pool.query(`UPDATE ${T()} SET lease_expires_at = now() WHERE queue = 'some'`);
    const running = claimed.slice(0, 2).map((c) => c.id);
    expect(
      await heartbeat(db.pool, db.schema, {
        nodeId: 'some',
        leaseMs: 60_000,
        ids: running,
        leaderKey: undefined,
      }),
    ).toEqual({ alive: true, extended: 2, leaderPid: null });
    const { rows } = await db.pool.query<{ id: string; extended: boolean }>(
      `SELECT id::text, lease_expires_at > now() + interval '50 seconds' AS extended FROM ${T()}
       WHERE queue = 'some' ORDER BY id`,
    );
    expect(rows).toEqual(claimed.map((c, i) => ({ id: c.id, extended: i < 2 })));
  });
});

/** The executed plan of the flush of `batch` (rolled back), as a flat list of nodes. */
async function explainFlush(batch: OutcomeRow[], shape: FlushShape): Promise<PlanNode[]> {
  const conn = await db.pool.connect();
  try {
    await conn.query('BEGIN');
    const stmt = statement(db.schema, 'flush', flushSql(shape), { prepared: false });
    const { rows } = await conn.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${stmt.text}`,
      flushOutcomeValues('busy', batch, shape),
    );
    return planNodes(rows[0]!['QUERY PLAN'][0]!.Plan);
  } finally {
    await conn.query('ROLLBACK');
    conn.release();
  }
}

describe('the flush plan', () => {
  // Run ahead: half the batch keeps its claims (`executing`), which changes only what is set.
  it.each([
    ['plain', false],
    ['run-ahead', true],
  ])(
    'is driven by primary key from the batch (%s): 10 outcomes among 5,000 rows in flight touch ~10 rows',
    async (_, ahead) => {
      await seed('plan', 5_000);
      // Statistics taken while nothing executes: the planner trap the flush must not fall into.
      await db.pool.query(`ANALYZE ${T()}`);
      const claimed = await claim('plan', 5_000, 'busy');
      expect(claimed).toHaveLength(5_000);
      const batch = claimed
        .slice(2_000, 2_010)
        .map((c, i) =>
          toOutcomeRow({ ...nextOutcome(c.id, c.claim), ...(ahead && i % 2 ? { continuation: c } : {}) }),
        );
      const shape = shapeOf(batch);
      expect(shape.inline).toBe(ahead);
      const nodes = await explainFlush(batch, shape);
      const touched = Math.max(...nodes.map((n) => (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1)));
      // No index over executing rows: the batch's rows are found by primary key.
      expect(nodes.some((n) => n['Index Name']?.endsWith('gen_durable_leases'))).toBe(false);
      expect(touched).toBeLessThanOrEqual(20);
      expect(removedBy(nodes)).toBeLessThanOrEqual(20);
      await releaseClaims(db.pool, db.schema, 'busy', null);
    },
  );
});

describe('the flush plan of a large batch', () => {
  it('1,000 outcomes among 60,000 rows stay linear: no join that compares every outcome with every row in flight', async () => {
    await seed('big', 60_000);
    // Statistics taken while nothing executes: the planner then believes few rows match the
    // guard and was seen to scan them as the outer side of a nested loop, comparing each with
    // every outcome (1,000 x 1,000 = 999,000 rows removed by the join filter, ~240 ms).
    await db.pool.query(`ANALYZE ${T()}`);
    const claimed = await claim('big', 1_000, 'busy');
    expect(claimed).toHaveLength(1_000);
    const batch = claimed.map((c) => toOutcomeRow(nextOutcome(c.id, c.claim)));
    const nodes = await explainFlush(batch, shapeOf(batch));
    const updated = nodes.find((n) => n['Node Type'] === 'ModifyTable');
    expect(updated?.['Actual Rows']).toBe(1_000); // every outcome applied
    expect(removedBy(nodes)).toBeLessThanOrEqual(2_000);
    await releaseClaims(db.pool, db.schema, 'busy', null);
  });
});

/** Postgres underneath, with one kind of failure injected for statements that match. */
function failing(
  matches: (config: { text: string; values?: unknown[] }) => boolean,
  code: string,
): Queryable {
  return {
    query: (config) => {
      if (matches(config)) {
        const error = new pg.DatabaseError(`injected ${code}`, 0, 'error');
        error.code = code;
        return Promise.reject(error);
      }
      return db.pool.query(config as never);
    },
  };
}

async function runFlusher(
  queryable: Queryable,
  entries: FlushEntry[],
  retryLimitMs = 60_000,
): Promise<{ applied: string[]; abandoned: string[] }> {
  const applied: string[] = [];
  const abandoned: string[] = [];
  const flusher = new Flusher({
    db: queryable,
    schema: db.schema,
    nodeId: 'fl',
    maxBatch: 1_000,
    retryLimitMs,
    onFlushed: (_entries, committed) => applied.push(...committed.applied.keys()),
    onAbandoned: (list) => abandoned.push(...list.map((e) => e.id)),
    onError: () => undefined,
  });
  flusher.start();
  for (const entry of entries) flusher.push(entry);
  await flusher.drained();
  await flusher.stop();
  return { applied: applied.sort(), abandoned: abandoned.sort() };
}

/** A flush whose batch holds `id`: its ids are `$2`, an array literal (`{1,2,3}`). */
const includesId = (id: string) => (config: { values?: unknown[] }) => {
  const ids = config.values?.[1];
  return typeof ids === 'string' && /^\{[\d,]*\}$/.test(ids) && ids.slice(1, -1).split(',').includes(id);
};

describe('flush failures are classified', () => {
  it('classifies real Postgres errors: connection loss and lost races are transient, the rest are not', async () => {
    const errorOf = (sql: string) =>
      db.pool.query(sql).then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(isTransient(await errorOf('SELECT * FROM no_such_table_here'))).toBe(false); // 42P01
    expect(isTransient(await errorOf("SELECT 'x'::int"))).toBe(false); // 22P02
    expect(isTransient(await errorOf('SELEC 1'))).toBe(false); // 42601
    const victim = new pg.Client({ connectionString: db.url });
    await victim.connect();
    victim.on('error', () => undefined);
    const { rows } = await victim.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const pending = victim.query('SELECT pg_sleep(30)').then(
      () => undefined,
      (e: unknown) => e,
    );
    await db.pool.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
    expect(isTransient(await pending)).toBe(true); // 57P01
    const afterwards = await victim.query('SELECT 1').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isTransient(afterwards)).toBe(true); // not queryable
    await victim.end().catch(() => undefined);
    expect(isTransient(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(
      true,
    );
    expect(isTransient(new TypeError('x is not a function'))).toBe(false);
  });

  it('an outcome failing with a non-data, non-transient error (XX000) ends failed with it; the rest commit', async () => {
    await seed('xx', 6);
    const claimed = await claim('xx', 6, 'fl');
    const poison = claimed[3]!.id;
    // Fails every statement carrying the poison outcome unless it is the stop with the error.
    const db2 = failing(
      (c) => includesId(poison)(c) && !JSON.stringify(c.values).includes('injected XX000'),
      'XX000',
    );
    const out = await runFlusher(
      db2,
      claimed.map((c) => nextOutcome(c.id, c.claim)),
    );
    expect(out).toEqual({ applied: claimed.map((c) => c.id).sort(), abandoned: [] });
    const { rows } = await db.pool.query<{ id: string; status: string; last_error: string | null }>(
      `SELECT id::text, status::text, last_error FROM ${T()} WHERE queue = 'xx' ORDER BY id`,
    );
    expect(rows.filter((r) => r.status === 'failed').map((r) => r.id)).toEqual([poison]);
    expect(rows.find((r) => r.id === poison)!.last_error).toMatch(/could not be stored: injected XX000/);
    expect(rows.filter((r) => r.status === 'runnable')).toHaveLength(5);
  });

  it('an outcome refused even as a bare stop is given up (reported), never silently dropped; the rest commit', async () => {
    await seed('bare', 4);
    const claimed = await claim('bare', 4, 'fl');
    const poison = claimed[0]!.id;
    const out = await runFlusher(
      failing(includesId(poison), '42501'),
      claimed.map((c) => nextOutcome(c.id, c.claim)),
    );
    expect(out.abandoned).toEqual([poison]);
    expect(out.applied).toEqual(
      claimed
        .slice(1)
        .map((c) => c.id)
        .sort(),
    );
  });

  it('a transient failure is retried with the same outcomes, and given up past the retry limit', async () => {
    await seed('tr', 3);
    const claimed = await claim('tr', 3, 'fl');
    let failures = 2;
    const flaky: Queryable = {
      query: (config) =>
        failures-- > 0 ? failing(() => true, '57P01').query(config) : db.pool.query(config as never),
    };
    const entries = claimed.map((c) => nextOutcome(c.id, c.claim));
    expect(await runFlusher(flaky, entries)).toEqual({
      applied: claimed.map((c) => c.id).sort(),
      abandoned: [],
    });
    await seed('tr2', 2);
    const more = await claim('tr2', 2, 'fl');
    const down = failing(() => true, '08006');
    const out = await runFlusher(
      down,
      more.map((c) => nextOutcome(c.id, c.claim)),
      300,
    );
    expect(out).toEqual({ applied: [], abandoned: more.map((c) => c.id).sort() });
  });
});

describe('claims the node no longer runs', () => {
  it('are not kept alive by its heartbeat: the reaper takes them while the node lives', async () => {
    const node = await join({
      machines: all,
      queues: { orphan: { concurrency: 2 } },
      lease: '2s',
      heartbeat: '200ms',
      reapInterval: '200ms',
    });
    // A claim of this node whose step no longer runs (its outcome was given up, say).
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO ${T()} (fsm, step, state, queue, status, locked_by, lease_expires_at, max_attempts)
       VALUES ('lh-plain', 'perform', '{}', 'orphan', 'executing', $1, now() + interval '1 second', 5)
       RETURNING id::text`,
      [node.id],
    );
    const id = rows[0]!.id;
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('done');
    expect(result.snapshot.attempt).toBe(1);
    expect(result.snapshot.errors).toMatchObject([{ error: expect.stringMatching(/lease expired/) }]);
  });
});

describe('timed wake-ups are never lost (safety poll: 1 hour)', () => {
  it('a delayed row inserted before the node joined runs when due', async () => {
    const c = client();
    const { id } = await c.insert(plain, { args: { i: 1 }, queue: 'before', delay: '1500ms' });
    const node = await join({ machines: all, queues: { before: { concurrency: 2 } } });
    expect((await node.client.waitFor(id, { timeout: '20s' })).status).toBe('done');
  });

  it('a delayed row inserted with immediate work in one batch runs when due', async () => {
    const node = await join({ machines: all, queues: { mixed: { concurrency: 4 } } });
    const c = client();
    const results = await c.insertAll([
      { machine: plain, args: { i: 1 }, queue: 'mixed' },
      { machine: plain, args: { i: 2 }, queue: 'mixed', delay: '1200ms' },
    ]);
    for (const r of results)
      expect((await node.client.waitFor(r.id, { timeout: '20s' })).status).toBe('done');
  });

  it('several delays in one call all run', async () => {
    const node = await join({ machines: all, queues: { many: { concurrency: 4 } } });
    const c = client();
    const results = await c.insertAll(
      [300, 900, 1500, 2100].map((delay, i) => ({ machine: plain, args: { i }, queue: 'many', delay })),
    );
    for (const r of results)
      expect((await node.client.waitFor(r.id, { timeout: '20s' })).status).toBe('done');
  });
});

class Overlapping extends PeriodicService {
  runs = 0;
  active = 0;
  maxActive = 0;
  constructor() {
    super(1);
  }
  async runOnce(): Promise<void> {
    this.runs++;
    this.maxActive = Math.max(this.maxActive, ++this.active);
    await new Promise((resolve) => setTimeout(resolve, 15));
    this.active--;
  }
  protected onError(): void {}
}

describe('PeriodicService', () => {
  it('runs one timer chain when start() follows a stop() that was not awaited', async () => {
    const s = new Overlapping();
    s.start();
    await eventually(() => Promise.resolve(s.active === 1 ? true : undefined), 'a first round');
    void s.stop();
    s.start();
    await eventually(() => Promise.resolve(s.runs >= 12 ? true : undefined), 'a dozen rounds');
    await s.stop();
    expect(s.maxActive).toBe(1);
  });
});

describe('errors are kept bounded, with their name, code and stack', () => {
  it('a 10 MB error message is cut; history entries keep name, code and a bounded stack', async () => {
    const node = await join({ machines: all, queues: { lh: { concurrency: 2 } } });
    const { id } = await node.client.insert(hugeError, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '30s' });
    expect(result.status).toBe('failed');
    const { rows } = await db.pool.query<{
      last: number;
      errors: number;
      history: Array<Record<string, unknown>>;
    }>(
      `SELECT length(last_error) AS last, length(errors::text) AS errors, errors AS history FROM ${T()} WHERE id = $1`,
      [id],
    );
    const row = rows[0]!;
    expect(row.last).toBeLessThanOrEqual(5_000);
    expect(row.errors).toBeLessThanOrEqual(2 * 9_000);
    expect(row.history).toHaveLength(2);
    for (const entry of row.history) {
      expect(entry).toMatchObject({ name: 'PaymentError', code: 'E_DECLINED', step: 'perform' });
      expect(entry.error).toMatch(/^step "perform" attempt \d: declined: x+… \[\d+ more characters\]$/);
      expect(entry.stack).toMatch(/PaymentError/);
    }
  });
});

describe('the reaper', () => {
  it("applies the machine's backoff to a reaped claim (no instant re-run on the next node)", async () => {
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, status, locked_by, claim, lease_expires_at, max_attempts)
       VALUES ('lh-patient', 'perform', '{}', 'reap', 'executing', 'gone', 1, now() - interval '1 second', 5),
              ('lh-plain', 'perform', '{}', 'reap', 'executing', 'gone', 1, now() - interval '1 second', 5)`,
    );
    const found = await findExpiredLeases(db.pool, db.schema, 100);
    const reaped = await reapClaims(db.pool, db.schema, new MachineRegistry(all), found, {
      reason: 'lease expired',
      expired: true,
    });
    expect(reaped).toHaveLength(2);
    const { rows } = await db.pool.query<{ fsm: string; status: string; attempt: number; wait: number }>(
      `SELECT fsm, status::text, attempt, extract(epoch FROM eligible_at - now())::float8 AS wait
       FROM ${T()} WHERE queue = 'reap' ORDER BY fsm`,
    );
    expect(rows.map((r) => [r.fsm, r.status, r.attempt])).toEqual([
      ['lh-patient', 'runnable', 1],
      ['lh-plain', 'runnable', 1],
    ]);
    expect(rows[0]!.wait).toBeGreaterThan(3_000); // its own backoff: an hour
    expect(rows[1]!.wait).toBeGreaterThan(0.5); // the default: 1 s (+ jitter) after attempt 0
    // Reaping again finds nothing: each claim is reaped once.
    expect(await findExpiredLeases(db.pool, db.schema, 100)).toEqual([]);
  });
});

describe('definitions', () => {
  it('get a 15-minute step timeout by default; null means none', () => {
    expect(plain.stepTimeoutMs).toBe(DEFAULT_STEP_TIMEOUT_MS);
    expect(DEFAULT_STEP_TIMEOUT_MS).toBe(15 * 60_000);
    const base = { module: import.meta.url, name: 'lh-x', args: z.object({}), perform: () => 1 };
    expect(defineJob({ ...base, stepTimeout: null }).stepTimeoutMs).toBeNull();
    expect(defineJob({ ...base, stepTimeout: '2s' }).stepTimeoutMs).toBe(2_000);
    expect(() => defineJob({ ...base, stepTimeout: -1 })).toThrow(/stepTimeout/);
  });
});

describe('statements', () => {
  it('are cached by their text, not only their id', () => {
    expect(statement(db.schema, 'same-id', 'SELECT 1').text).toBe('SELECT 1');
    expect(statement(db.schema, 'same-id', 'SELECT 2').text).toBe('SELECT 2');
  });

  it('the pick is planned with its values while the size of the table is not known', async () => {
    // Prepared by size class once a pick through the same pool read it: test/size-classed-plans.test.ts.
    const names: Array<string | undefined> = [];
    const recording: Queryable = {
      query: (config) => {
        names.push(config.name);
        return db.pool.query(config as never);
      },
    };
    await claimBatch(recording, db.schema, { queue: 'none', limit: 5, nodeId: 'x', leaseMs: 1_000 });
    expect(names).toEqual([undefined]);
  });
});
