/**
 * `npm run bench:throttled`: what one pick costs when a rate limit holds rows back. For
 * each backlog size it fills a fresh schema with that many due rows of one spent bucket (1
 * token an hour, none left) followed by 100 unlimited rows in the same queue, and times
 * the guarded pick of 50 rows (`EXPLAIN ANALYZE`, rolled back, so every run sees the same
 * table): execution and planning time, buffers touched, rows it claimed. A pick whose cost
 * followed the batch would print the same line for every backlog.
 *
 * Flags: --backlogs 0,1000,10000,100000 --runs 7 --limit 50
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { migrate } from '../migrations/migrate.js';
import { CLAIM_GUARDED_SQL, UNKNOWN_LIMIT_DEFER_MS } from '../runtime/sql/claim.js';

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

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const pool = new pg.Pool({ connectionString: url, max: 2 });
console.log(`guarded pick of ${limit} rows; ${runs} runs each; medians`);
console.log('backlog (throttled rows ahead)   exec ms   plan ms   buffers   claimed');
try {
  for (const backlog of backlogs) {
    const schema = `bench_throttled_${randomBytes(4).toString('hex')}`;
    await migrate({ pool, schema });
    try {
      const s = `"${schema}"`;
      await pool.query(
        `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('spent', 1, 3600000, 1)`,
      );
      await pool.query(
        `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted) VALUES ('spent', '', 0, now(), 1)`,
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
      const text = CLAIM_GUARDED_SQL.replaceAll(':schema', s);
      const exec: number[] = [];
      const plan: number[] = [];
      const buffers: number[] = [];
      let claimed = 0;
      const client = await pool.connect();
      try {
        for (let i = 0; i < runs; i++) {
          await client.query('BEGIN');
          const { rows } = await client.query<{ 'QUERY PLAN': Plan[] }>(
            `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`,
            ['q', limit, 'bench', 30_000, null, [], [], UNKNOWN_LIMIT_DEFER_MS],
          );
          const p = rows[0]!['QUERY PLAN'][0]!;
          const { rows: c } = await client.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM ${s}.gen_durable WHERE status = 'executing'`,
          );
          await client.query('ROLLBACK');
          exec.push(p['Execution Time']);
          plan.push(p['Planning Time']);
          buffers.push((p.Plan['Shared Hit Blocks'] ?? 0) + (p.Plan['Shared Read Blocks'] ?? 0));
          claimed = c[0]!.n;
        }
      } finally {
        client.release();
      }
      console.log(
        `${String(backlog).padStart(30)}   ${median(exec).toFixed(2).padStart(7)}   ${median(plan)
          .toFixed(2)
          .padStart(7)}   ${String(median(buffers)).padStart(7)}   ${String(claimed).padStart(7)}`,
      );
    } finally {
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  }
} finally {
  await pool.end();
}
