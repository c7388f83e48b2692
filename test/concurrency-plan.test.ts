/**
 * The guarded pick's plan: its concurrency-key guard probes `gen_durable_concurrency_active`
 * per keyed candidate (its cost follows the batch, never the number of steps executing), and
 * its rate part is never executed for a batch that names no limit. And bad options are
 * refused naming their path.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { Cluster, ValidationError, createClient } from '../index.js';
import { statement } from '../runtime/sql/db.js';
import { CLAIM_GUARDED_SQL } from '../runtime/sql/claim.js';
import { logged } from './fixtures/key-machines.js';
import { useTestSchema } from './support/db.js';
import { type PlanNode, explainRolledBack } from './support/plan.js';

const db = useTestSchema('keyplan');
const T = (): string => `"${db.schema}".gen_durable`;

/**
 * `EXPLAIN (ANALYZE)` of the guarded pick of `limit` rows of `queue`, rolled back (so the
 * table is as it was); `inside` reads what the pick wrote before the rollback.
 */
async function explainGuarded<R = undefined>(
  queue: string,
  limit: number,
  inside?: (client: pg.PoolClient) => Promise<R>,
): Promise<{ plan: PlanNode[]; seen: R | undefined }> {
  const stmt = statement(db.schema, 'claim_guarded', CLAIM_GUARDED_SQL);
  return explainRolledBack(
    db.pool,
    stmt.text,
    [queue, limit, 'explain', 30_000, null, [], [], 5_000],
    inside,
  );
}

describe('the concurrency guard of the pick', () => {
  it('probes the active-key index once per keyed candidate among 5,000 executing keyed rows', async () => {
    // 5,000 executing rows, each in slot 0 of a key of its own; 100 runnable rows, half of
    // them on keys that are busy.
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, status, concurrency_key, concurrency_slot, locked_by)
       SELECT 'm', 's', '{}', 'busy', 'executing', 'k:' || g, 0, 'elsewhere' FROM generate_series(1, 5000) g`,
    );
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, concurrency_key)
       SELECT 'm', 's', '{}', 'plan', 'k:' || (CASE WHEN g % 2 = 0 THEN g ELSE 100000 + g END) FROM generate_series(1, 100) g`,
    );
    await db.pool.query(`ANALYZE ${T()}`);
    const { plan: all } = await explainGuarded('plan', 20);
    expect(all.filter((n) => n['Node Type'] === 'Seq Scan')).toEqual([]);
    const probes = all.filter((n) => n['Index Name'] === 'gen_durable_concurrency_active');
    expect(probes.length).toBeGreaterThan(0);
    // Rows read through it: at most one per probe (the busy key's row), nowhere near 5,000.
    const read = probes.reduce((sum, n) => sum + (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1), 0);
    expect(read).toBeLessThanOrEqual(100);
    // The claim's update (the other one on the table puts off rows of unknown limits: none).
    const updates = all.filter(
      (n) => n['Node Type'] === 'ModifyTable' && n['Relation Name'] === 'gen_durable',
    );
    expect(updates.map((n) => n['Actual Rows']).sort()).toEqual([0, 20]); // 20 free keys admitted, the busy ones skipped
  });

  it('never executes the rate part for candidates that name no limit (and does for ones that do)', async () => {
    await db.pool.query(
      `INSERT INTO "${db.schema}".gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('r', 100, 1000, 100)`,
    );
    await db.pool.query(
      `INSERT INTO "${db.schema}".gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted)
       SELECT 'r', 'p' || g, 1, now(), 1 FROM generate_series(1, 50) g`,
    );
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, rate_limit, rate_partition)
       SELECT 'm', 's', '{}', q, CASE WHEN q = 'rated' THEN 'r' END, CASE WHEN q = 'rated' THEN 'p' || g END
       FROM generate_series(1, 40) g, (VALUES ('unlimited'), ('rated')) v(q)`,
    );
    await db.pool.query(`ANALYZE ${T()}`);
    const plan = async (queue: string) => (await explainGuarded(queue, 20)).plan;
    const rateTables = ['gen_durable_rate_configs', 'gen_durable_rate_buckets'];
    const reads = (all: PlanNode[]) =>
      all.filter((n) => rateTables.includes(n['Relation Name'] ?? '') && n['Node Type'] !== 'ModifyTable');
    const upsert = (all: PlanNode[]) =>
      all.find((n) => n['Node Type'] === 'ModifyTable' && n['Relation Name'] === 'gen_durable_rate_buckets');

    const unlimited = await plan('unlimited');
    // The statement has its reads of the rate tables (the probe, the admission): none ran.
    expect(reads(unlimited).length).toBeGreaterThan(0);
    expect(reads(unlimited).map((n) => n['Actual Loops'])).toEqual(reads(unlimited).map(() => 0));
    expect(upsert(unlimited)?.['Actual Rows']).toBe(0);
    const updates = unlimited.filter(
      (n) => n['Node Type'] === 'ModifyTable' && n['Relation Name'] === 'gen_durable',
    );
    expect(updates.map((n) => n['Actual Rows']).sort()).toEqual([0, 20]); // claimed; none put off

    // The same statement for rows that name a limit reads and writes the buckets.
    const rated = await plan('rated');
    expect(reads(rated).some((n) => (n['Actual Loops'] ?? 0) > 0)).toBe(true);
    const { rows: after } = await db.pool.query(
      `SELECT count(*)::int AS n FROM "${db.schema}".gen_durable_rate_buckets`,
    );
    expect(after[0]).toEqual({ n: 50 }); // rolled back
    expect(upsert(rated)?.['Actual Rows']).toBeGreaterThan(0);
  });

  it('reads as many throttled rows as its batch, never the backlog: the rows a bucket cannot take are booked out of the way', async () => {
    const s = `"${db.schema}"`;
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('spent', 1, 3600000, 1)`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted) VALUES ('spent', '', 0, now(), 1)`,
    );
    await db.pool.query(
      `INSERT INTO ${T()} (fsm, step, state, queue, rate_limit, eligible_at)
       SELECT 'm', 's', '{}', 'backlog', 'spent', now() - interval '1 hour' FROM generate_series(1, 3000)`,
    );
    await db.pool.query(`ANALYZE ${T()}`);
    const { plan: all, seen: booked } = await explainGuarded('backlog', 20, (client) =>
      client
        .query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${T()} WHERE queue = 'backlog' AND rate_booked AND eligible_at > now()`,
        )
        .then((r) => r.rows),
    );
    // Rows read from the table by the pick's scans: about the batch, nowhere near 3,000.
    const read = all
      .filter((n) => n['Relation Name'] === 'gen_durable' && /Scan/.test(n['Node Type']))
      .reduce((sum, n) => sum + (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1), 0);
    expect(read).toBeLessThanOrEqual(100);
    expect(booked?.[0]).toEqual({ n: 20 }); // the batch, booked into the line
  });

  it('refuses bad keys and gates naming their path', async () => {
    const client = createClient({ connectionString: db.url, schema: db.schema });
    try {
      const bad = await client
        .insert(logged, { args: { ms: 1, key: null }, concurrencyKey: '' })
        .catch((e: unknown) => e);
      expect(bad).toBeInstanceOf(ValidationError);
      expect((bad as ValidationError).path).toBe('concurrencyKey');
    } finally {
      await client.close();
    }
    for (const [limits, path] of [
      [{ stripe: { limit: 0 } }, 'concurrencyLimits.stripe.limit'],
      [{ stripe: { limit: 2, burst: 3 } }, 'concurrencyLimits.stripe'],
      [{ 'a:b': { limit: 2 } }, 'concurrencyLimits.a:b'],
    ] as const) {
      const error = await Cluster.join({
        connectionString: db.url,
        schema: db.schema,
        concurrencyLimits: limits as never,
      }).catch((e: unknown) => e);
      expect(error, path).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path, path).toBe(path);
    }
  });
});
