/**
 * The pick and the plain flush are prepared under a name per size class of the instance
 * table (`runtime/sql/table-size.ts`), so a generic plan Postgres makes for them never
 * outlives the size it was made at by more than a doubling; without a fresh reading of the
 * size they run unprepared. Their generic plans (forced here, as Postgres may choose them
 * from the sixth execution on) are index-driven on a large table: the pick finds the rows it
 * updates by primary key, and the flush probes the primary key for its batch's ids, also
 * with statistics taken while nothing executed.
 */
import { describe, expect, it } from 'vitest';
import { type FlushEntry } from '../runtime/flusher.js';
import { toOutcomeRow } from '../runtime/commit.js';
import { type Queryable } from '../runtime/sql/db.js';
import { CLAIM_BATCH_SQL, claimBatch } from '../runtime/sql/claim.js';
import {
  type FlushShape,
  type OutcomeRow,
  flushOutcomeValues,
  flushOutcomes,
  flushSql,
  shapeOf,
} from '../runtime/sql/flush.js';
import { releaseClaims } from '../runtime/sql/loop.js';
import { PickPool } from '../runtime/sql/pick-pool.js';
import { FRESH_MS, freshSizeClass, noteTableSize, sizeClassOf } from '../runtime/sql/table-size.js';
import { seedRunnable, useTestSchema } from './support/db.js';
import { type PlanNode, planNodes, removedBy } from './support/plan.js';

const db = useTestSchema('sizes');
const T = (): string => `"${db.schema}".gen_durable`;

const seed = (queue: string, n: number): Promise<void> => seedRunnable(db, queue, n);

/** A queryable over the test pool that records the name each statement ran under. */
function recording(): { db: Queryable; names: Array<string | undefined> } {
  const names: Array<string | undefined> = [];
  return {
    names,
    db: {
      query: (config) => {
        names.push(config.name);
        return db.pool.query(config as never);
      },
    },
  };
}

function outcome(id: string, claim: string, ends = false): OutcomeRow {
  const entry: FlushEntry = {
    id,
    claim,
    queue: 'q',
    result: ends
      ? { id, kind: 'done', result: 'null' }
      : { id, kind: 'next', step: 'perform', state: '{"i":1}', delayMs: 0 },
  };
  return toOutcomeRow(entry);
}

async function heapBytes(): Promise<number> {
  const { rows } = await db.pool.query<{ b: string }>(`SELECT pg_relation_size('${T()}') AS b`);
  return Number(rows[0]!.b);
}

/** The executed plan of `text` planned with `values` (rolled back), as a flat list of nodes. */
async function customPlan(text: string, values: unknown[]): Promise<PlanNode[]> {
  const conn = await db.pool.connect();
  try {
    await conn.query('BEGIN');
    const { rows } = await conn.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${text.replaceAll(':schema', `"${db.schema}"`)}`,
      values,
    );
    return planNodes(rows[0]!['QUERY PLAN'][0]!.Plan);
  } finally {
    await conn.query('ROLLBACK');
    conn.release();
  }
}

/** A value as Postgres reads it in text: arrays as array literals. */
function literal(value: unknown): string {
  if (!Array.isArray(value)) return String(value);
  return `{${value.map((e) => (e === null ? 'NULL' : JSON.stringify(String(e)))).join(',')}}`;
}

/** The executed generic plan of `text` with `values` (rolled back), as a flat list of nodes. */
async function genericPlan(text: string, values: unknown[]): Promise<PlanNode[]> {
  const conn = await db.pool.connect();
  try {
    await conn.query('BEGIN');
    await conn.query('SET LOCAL plan_cache_mode = force_generic_plan');
    await conn.query(`PREPARE generic_under_test AS ${text.replaceAll(':schema', `"${db.schema}"`)}`);
    // EXPLAIN EXECUTE takes no bound parameters: the values go in as literals.
    const literals = values.map((v) => (v === null ? 'NULL' : conn.escapeLiteral(literal(v)))).join(', ');
    const { rows } = await conn.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE generic_under_test(${literals})`,
    );
    return planNodes(rows[0]!['QUERY PLAN'][0]!.Plan);
  } finally {
    await conn.query('ROLLBACK');
    await conn.query('DEALLOCATE generic_under_test');
    conn.release();
  }
}

const seqScans = (nodes: readonly PlanNode[]) =>
  nodes.filter((n) => n['Node Type'] === 'Seq Scan' && n['Relation Name'] === 'gen_durable');

describe('size classes', () => {
  it('one up to 8 pages, then one per doubling; a reading stands for FRESH_MS', () => {
    expect([0, 8191, 8 * 8192 - 1].map(sizeClassOf)).toEqual([0, 0, 0]);
    expect([8 * 8192, 16 * 8192 - 1, 16 * 8192, 1024 * 8192].map(sizeClassOf)).toEqual([1, 1, 2, 8]);
    const pool = {};
    noteTableSize(pool, 'sizes_unit', 16 * 8192, 1_000);
    expect(freshSizeClass(pool, 'sizes_unit', 1_000 + FRESH_MS)).toBe(2);
    expect(freshSizeClass(pool, 'sizes_unit', 1_001 + FRESH_MS)).toBeUndefined();
    expect(freshSizeClass(pool, 'sizes_never_read', 1_000)).toBeUndefined();
    // Read through another pool (another database, maybe): no reading here.
    expect(freshSizeClass({}, 'sizes_unit', 1_000)).toBeUndefined();
  });
});

describe('the pick and the plain flush', () => {
  it('run unprepared until the size is read, then under their size class; stale again, unprepared', async () => {
    await seed('named', 40);
    const { db: q, names } = recording();
    const first = await claimBatch(q, db.schema, {
      queue: 'named',
      limit: 10,
      nodeId: 'n1',
      leaseMs: 60_000,
    });
    expect(first).toHaveLength(10);
    const sizeClass = sizeClassOf(await heapBytes());
    // The pick read the size: the next one and the flush are prepared under its class.
    expect(freshSizeClass(q, db.schema)).toBe(sizeClass);
    const second = await claimBatch(q, db.schema, {
      queue: 'named',
      limit: 10,
      nodeId: 'n1',
      leaseMs: 60_000,
    });
    await flushOutcomes(
      q,
      db.schema,
      'n1',
      second.map((r) => outcome(r.id, r.claim)),
    );
    expect(names[0]).toBeUndefined();
    expect(names[1]).toMatch(new RegExp(`^gd_claim_[0-9a-f]+_s${sizeClass}$`));
    expect(names[2]).toMatch(new RegExp(`^gd_flush_[0-9a-f]+_s${sizeClass}$`));
    // A reading older than FRESH_MS is none: planned with its values again.
    noteTableSize(q, db.schema, await heapBytes(), performance.now() - 2 * FRESH_MS);
    await flushOutcomes(
      q,
      db.schema,
      'n1',
      first.map((r) => outcome(r.id, r.claim)),
    );
    expect(names[3]).toBeUndefined();
  });

  it('the pick moves to the next class when the table has doubled', async () => {
    await seed('grow', 20);
    const { db: q, names } = recording();
    await claimBatch(q, db.schema, { queue: 'grow', limit: 5, nodeId: 'n1', leaseMs: 60_000 });
    const before = freshSizeClass(q, db.schema)!;
    await seed('grow', 4 * Math.max(1_000, (await heapBytes()) / 60));
    await claimBatch(q, db.schema, { queue: 'grow', limit: 5, nodeId: 'n1', leaseMs: 60_000 });
    await claimBatch(q, db.schema, { queue: 'grow', limit: 5, nodeId: 'n1', leaseMs: 60_000 });
    const after = freshSizeClass(q, db.schema)!;
    expect(after).toBeGreaterThanOrEqual(before + 2);
    expect(after).toBe(sizeClassOf(await heapBytes()));
    // The pick right after the growth ran under the old class (it read the new size), the next under the new.
    expect(names.at(-1)).toMatch(new RegExp(`_s${after}$`));
    expect(names.at(-2)).toMatch(new RegExp(`_s${before}$`));
  });
});

describe('the pick on connections of its own (pick-pool.ts)', () => {
  it('runs on its generic plan from the first prepared execution, and its size reading serves the flush elsewhere', async () => {
    await seed('own', 200);
    const picks = new PickPool({ connectionString: db.url, max: 1 }, (e) => {
      throw e;
    });
    try {
      const claimed = [];
      for (let i = 0; i < 8; i++) {
        claimed.push(
          ...(await claimBatch(picks, db.schema, {
            queue: 'own',
            limit: 10,
            nodeId: 'n1',
            leaseMs: 60_000,
            sameDatabase: db.pool,
          })),
        );
      }
      expect(claimed).toHaveLength(80);
      // One connection: its prepared statements are the pick's, under the size class read.
      const { rows } = await picks.query<{ name: string; generic: string; custom: string }>({
        text: `SELECT name, generic_plans::text AS generic, custom_plans::text AS custom FROM pg_prepared_statements`,
      });
      expect(rows.map((r) => r.name)).toEqual([expect.stringMatching(/^gd_claim_[0-9a-f]+_s\d+$/)]);
      // The first pick ran unprepared (it read the size); the seven after it, generic.
      expect(rows.map((r) => [r.generic, r.custom])).toEqual([['7', '0']]);
      // The flush, on the other pool, is prepared by the size the pick read.
      expect(freshSizeClass(db.pool, db.schema)).toBe(sizeClassOf(await heapBytes()));
    } finally {
      await releaseClaims(db.pool, db.schema, 'n1', null);
      await picks.end();
    }
  });
});

describe('generic plans on a large table', () => {
  it('the pick finds the rows it updates by primary key: no scan of the table', async () => {
    await seed('big-pick', 60_000);
    await db.pool.query(`ANALYZE ${T()}`);
    const nodes = await genericPlan(CLAIM_BATCH_SQL, ['big-pick', 20, 'n1', 60_000, null]);
    expect(nodes.find((n) => n['Node Type'] === 'ModifyTable')?.['Actual Rows']).toBe(20);
    expect(seqScans(nodes)).toEqual([]);
    expect(
      Math.max(...nodes.map((n) => (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1))),
    ).toBeLessThanOrEqual(40);
  });

  it.each([
    ['10 outcomes among 5,000 in flight', 5_000, 10, false],
    ['1,000 outcomes among 60,000 rows', 60_000, 1_000, false],
    ['10 outcomes among 5,000 in flight, half of them done and deleted (retention 0)', 5_000, 10, true],
    ['1,000 outcomes among 60,000 rows, half of them done and deleted (retention 0)', 60_000, 1_000, true],
  ])('the flush probes the primary key for its batch: %s', async (_, rows, batchSize, deletes) => {
    const queue = `big-flush-${rows}`;
    await seed(queue, rows);
    // Statistics taken while nothing executes: the trap the custom plan is tested against too.
    await db.pool.query(`ANALYZE ${T()}`);
    const claimed = await claimBatch(db.pool, db.schema, {
      queue,
      limit: Math.min(rows, 5_000),
      nodeId: 'busy',
      leaseMs: 60_000,
    });
    // Every other one ends when deleting: the delete takes those, the update the rest.
    const batch = claimed.slice(0, batchSize).map((c, i) => outcome(c.id, c.claim, deletes && i % 2 === 0));
    const shape: FlushShape = { ...shapeOf(batch), deletes };
    const values = flushOutcomeValues('busy', batch, shape);
    // The plain shapes' plans with their values are tested in test/loop-hardening.test.ts.
    for (const nodes of [
      await genericPlan(flushSql(shape), values),
      ...(deletes ? [await customPlan(flushSql(shape), values)] : []),
    ]) {
      const modified = nodes.filter((n) => n['Node Type'] === 'ModifyTable').map((n) => n['Actual Rows']);
      expect(modified).toEqual(deletes ? [batchSize / 2, batchSize / 2] : [batchSize]);
      expect(seqScans(nodes)).toEqual([]);
      expect(nodes.some((n) => n['Index Name']?.endsWith('gen_durable_leases'))).toBe(false);
      expect(removedBy(nodes)).toBeLessThanOrEqual(2 * batchSize);
      // A probe made once per outcome never compares with the batch's whole array as well:
      // 1,000 probes each matching 1,000 ids (and sorting them) took ~36 ms per flush.
      const perOutcome = nodes.filter(
        (n) => n['Index Name'] === 'gen_durable_pkey' && (n['Actual Loops'] ?? 1) > 1,
      );
      expect(perOutcome.filter((n) => n['Index Cond']?.includes('ANY'))).toEqual([]);
    }
    await releaseClaims(db.pool, db.schema, 'busy', null);
  });
});
