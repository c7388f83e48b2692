/**
 * `npm run bench:throttled`: what picks cost when a rate limit holds rows back. For each
 * backlog size it fills a fresh schema with that many due rows of one spent bucket (1 token
 * an hour, none left) followed by 100 free rows in the same queue, then:
 * - times one guarded pick of 50 rows (`EXPLAIN ANALYZE`, rolled back: the backlog still to
 *   be booked): execution and planning time, buffers touched;
 * - picks for real, as a feeder does, until the 100 free rows are claimed: how many picks
 *   that took (the throttled rows are booked into their bucket's line on the way, 50 a
 *   pick, each once) and the median time of a pick;
 * - times one more pick, rolled back, now that the backlog is booked.
 * A pick whose cost followed the batch prints the same times for every backlog.
 *
 * Flags: --backlogs 0,1000,10000,100000 --runs 7 --limit 50
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { migrate } from '../migrations/migrate.js';
import { CLAIM_GUARDED_SQL, UNKNOWN_LIMIT_DEFER_MS, claimGuarded } from '../runtime/sql/claim.js';
import { median } from './lib/stats.js';

const { values: flags } = parseArgs({
  options: {
    backlogs: { type: 'string', default: '0,1000,10000,100000' },
    runs: { type: 'string', default: '7' },
    limit: { type: 'string', default: '50' },
  },
  strict: true,
});
const backlogs = flags.backlogs.split(',').map(Number);
const runs = Number(flags.runs);
const limit = Number(flags.limit);
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

interface Plan {
  'Planning Time': number;
  'Execution Time': number;
  Plan: { 'Shared Hit Blocks'?: number; 'Shared Read Blocks'?: number };
}

const cell = (v: number | string, width: number): string =>
  (typeof v === 'number' ? v.toFixed(2) : v).padStart(width);

/** One guarded pick, rolled back, `runs` times: median execution and planning ms, buffers. */
async function onePick(client: pg.PoolClient, schema: string): Promise<[number, number, number]> {
  const plans: Plan[] = [];
  for (let i = 0; i < runs; i++) {
    await client.query('BEGIN');
    const { rows } = await client.query<{ 'QUERY PLAN': Plan[] }>(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${CLAIM_GUARDED_SQL.replaceAll(':schema', `"${schema}"`)}`,
      ['q', limit, 'bench', 30_000, null, [], [], UNKNOWN_LIMIT_DEFER_MS],
    );
    await client.query('ROLLBACK');
    plans.push(rows[0]!['QUERY PLAN'][0]!);
  }
  return [
    median(plans.map((p) => p['Execution Time'])),
    median(plans.map((p) => p['Planning Time'])),
    median(plans.map((p) => (p.Plan['Shared Hit Blocks'] ?? 0) + (p.Plan['Shared Read Blocks'] ?? 0))),
  ];
}

const pool = new pg.Pool({ connectionString: url, max: 2 });
console.log(`guarded picks of ${limit} rows; one-pick figures are medians of ${runs} rolled-back runs`);
console.log(
  'throttled rows ahead | first pick: exec ms  plan ms  buffers | picks to the free rows  median ms | booked: exec ms  buffers',
);
try {
  for (const backlog of backlogs) {
    const schema = `bench_throttled_${randomBytes(4).toString('hex')}`;
    await migrate({ pool, schema });
    const s = `"${schema}"`;
    const client = await pool.connect();
    try {
      await pool.query(
        `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('spent', 1, 3600000, 1)`,
      );
      await pool.query(
        `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted)
         VALUES ('spent', '', 0, now(), 1)`,
      );
      await pool.query(
        `INSERT INTO ${s}.gen_durable (fsm, step, state, queue, rate_limit, eligible_at)
         SELECT 'm', 's', '{}', 'q', 'spent', now() - interval '1 hour' FROM generate_series(1, $1)`,
        [backlog],
      );
      await pool.query(
        `INSERT INTO ${s}.gen_durable (fsm, step, state, queue, eligible_at)
         SELECT 'm', 's', '{}', 'q', now() - interval '1 minute' FROM generate_series(1, 100)`,
      );
      await pool.query(`ANALYZE ${s}.gen_durable`);
      const [exec, plan, buffers] = await onePick(client, schema);
      let picks = 0;
      let free = 0;
      const times: number[] = [];
      while (free < 100 && picks < backlog / limit + 100) {
        const t0 = performance.now();
        const { rows } = await claimGuarded(client, schema, {
          queue: 'q',
          limit,
          nodeId: 'bench',
          leaseMs: 30_000,
        });
        times.push(performance.now() - t0);
        picks++;
        free += rows.length;
      }
      const [bookedExec, , bookedBuffers] = await onePick(client, schema);
      console.log(
        `${String(backlog).padStart(20)} | ${cell(exec, 19)}  ${cell(plan, 7)}  ${cell(String(buffers), 7)} | ` +
          `${cell(String(picks), 22)}  ${cell(median(times), 9)} | ${cell(bookedExec, 15)}  ${cell(String(bookedBuffers), 7)}`,
      );
    } finally {
      client.release();
      await pool.query(`DROP SCHEMA ${s} CASCADE`);
    }
  }
} finally {
  await pool.end();
}
