/**
 * The pick and the flush are prepared only where Postgres plans every execution with its
 * values: on a pool made by `customPlannedPool` (the node's own) they are parsed once per
 * connection and never planned generically; on a caller's pool they run unprepared, as
 * its settings may allow generic plans. Read off `pg_prepared_statements` of the pool's one
 * connection, which counts each statement's generic and custom plans.
 */
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { customPlannedPool } from '../runtime/sql/db.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { ATTEMPT, flushOutcomes } from '../runtime/sql/flush.js';
import { useTestSchema } from './support/db.js';

const db = useTestSchema('prep');
const custom = customPlannedPool({ connectionString: db.url, max: 1 });
const plain = new pg.Pool({ connectionString: db.url, max: 1 });

afterAll(async () => {
  await custom.end();
  await plain.end();
});

async function seed(queue: string, n: number): Promise<void> {
  await db.pool.query(
    `INSERT INTO "${db.schema}".gen_durable (fsm, step, state, queue, status, max_attempts)
     SELECT 'm', 's', '{}', $1, 'runnable', 3 FROM generate_series(1, $2)`,
    [queue, n],
  );
}

/** `rounds` picks of 5 rows of `queue` on `pool`, each batch flushed as done. */
async function drain(pool: pg.Pool, queue: string, rounds: number): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    const rows = await claimBatch(pool, db.schema, { queue, limit: 5, nodeId: 'n1', leaseMs: 60_000 });
    expect(rows).toHaveLength(5);
    const applied = await flushOutcomes(
      pool,
      db.schema,
      'n1',
      rows.map((r) => ({
        id: r.id,
        claim: r.claim,
        status: 'done' as const,
        step: null,
        state: null,
        attempt: ATTEMPT.keep,
        delayMs: null,
        result: 'null',
        lastError: null,
        error: null,
      })),
    );
    expect(applied.filter((r) => r.kind === 'applied')).toHaveLength(5);
  }
}

interface Prepared {
  name: string;
  generic_plans: string;
  custom_plans: string;
  mode: string;
}

async function preparedOn(pool: pg.Pool): Promise<Prepared[]> {
  const { rows } = await pool.query<Prepared>(
    `SELECT name, generic_plans::text, custom_plans::text, current_setting('plan_cache_mode') AS mode
     FROM pg_prepared_statements ORDER BY name`,
  );
  return rows;
}

describe('the pick and the flush', () => {
  it("are prepared on the node's own pool and planned with their values every time", async () => {
    await seed('custom', 60);
    await drain(custom, 'custom', 12);
    const prepared = await preparedOn(custom);
    expect(prepared.map((p) => p.mode)).toContain('force_custom_plan');
    const hot = prepared.filter((p) => /^gd_(claim|flush)_/.test(p.name));
    expect(hot.map((p) => p.name.replace(/_[0-9a-f]+$/, ''))).toEqual(['gd_claim', 'gd_flush']);
    // Twelve executions each, every one planned with its values (a generic plan is
    // considered from the sixth on where the setting is left alone).
    for (const p of hot)
      expect({ generic: p.generic_plans, custom: p.custom_plans }).toEqual({ generic: '0', custom: '12' });
  });

  it("run unprepared on a caller's pool", async () => {
    await seed('plain', 60);
    await drain(plain, 'plain', 12);
    const prepared = await preparedOn(plain);
    expect(prepared.filter((p) => /^gd_(claim|flush)_/.test(p.name))).toEqual([]);
    expect(
      (await plain.query<{ m: string }>(`SELECT current_setting('plan_cache_mode') AS m`)).rows[0]!.m,
    ).toBe('auto');
  });
});
