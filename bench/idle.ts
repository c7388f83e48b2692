/**
 * `npm run bench:idle`: how many statements an idle cluster sends. Starts N nodes (default
 * 3, in this process, on the compiled package) in a fresh schema with nothing to do, lets
 * them settle, then counts for `--seconds` the transactions the database commits
 * (`pg_stat_database.xact_commit`, which counts every statement outside an explicit
 * transaction) and the ones this bench itself caused, and prints queries per second.
 *
 * Flags: --nodes 3 --seconds 20 --settle 3
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { BENCH_QUEUE, noop } from './jobs.mjs';

const compiled = new URL('../dist/index.js', import.meta.url).href;
const { Cluster, migrate } = (await import(compiled)) as typeof import('../index.js');

const { values: flags } = parseArgs({
  options: {
    nodes: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '20' },
    settle: { type: 'string', default: '3' },
  },
  strict: true,
});
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `idle_${randomBytes(4).toString('hex')}`;
const admin = new pg.Client({ connectionString: url });
await admin.connect();
await migrate({ connectionString: url, schema });
const nodes = await Promise.all(
  Array.from({ length: Number(flags.nodes) }, () =>
    Cluster.join({
      connectionString: url,
      schema,
      migrate: false,
      machines: [noop],
      queues: { [BENCH_QUEUE]: {} },
    }),
  ),
);
const commits = async (): Promise<number> =>
  Number(
    (
      await admin.query<{ n: string }>(
        'SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = current_database()',
      )
    ).rows[0]!.n,
  );
try {
  await new Promise((resolve) => setTimeout(resolve, Number(flags.settle) * 1_000));
  // The statistics are flushed lazily: force a snapshot so two reads are comparable.
  await admin.query('SELECT pg_stat_clear_snapshot()');
  const before = await commits();
  const started = Date.now();
  await new Promise((resolve) => setTimeout(resolve, Number(flags.seconds) * 1_000));
  await admin.query('SELECT pg_stat_clear_snapshot()');
  const after = await commits();
  const seconds = (Date.now() - started) / 1_000;
  // This bench's own reads: the two counting queries and one snapshot clear between them.
  const own = 2;
  const perSecond = (after - before - own) / seconds;
  console.log(`idle cluster: ${nodes.length} nodes, ${seconds.toFixed(1)} s`);
  console.log(`  leader: ${nodes.filter((n) => n.isLeader).length} node(s)`);
  console.log(
    `  committed transactions in the database: ${after - before - own} → ${perSecond.toFixed(2)}/s`,
  );
  console.log(
    `  per node: ${(perSecond / nodes.length).toFixed(2)}/s (other clients of this database count too)`,
  );
} finally {
  await Promise.all(nodes.map((n) => n.stop({ timeout: 1_000 })));
  await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
  await admin.end();
}
