/**
 * `npm run bench:idle`: how many statements an idle cluster sends. Starts N nodes (default
 * 3, in this process, on the compiled package) in a fresh schema with nothing to do, lets
 * them settle, then counts for `--seconds` the transactions the database commits
 * (`pg_stat_database.xact_commit`, which counts every statement outside an explicit
 * transaction) and the ones this bench itself caused, and prints queries per second; and
 * the statements the nodes themselves sent (counted in this process), by kind.
 *
 * Flags: --nodes 3 --seconds 20 --settle 3
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { BENCH_QUEUE, noop } from './jobs.mjs';

// Every statement the nodes send, counted by what it is (its first words), in this process:
// the database's counter below includes other clients, this one only the cluster's.
const sent = new Map<string, number>();
let counting = false;
// eslint-disable-next-line @typescript-eslint/unbound-method -- re-bound with apply below
const query = pg.Client.prototype.query as (...args: unknown[]) => unknown;
pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  if (counting) {
    const first = args[0];
    const text = typeof first === 'string' ? first : ((first as { text?: string } | null)?.text ?? '');
    const label = text.replace(/\s+/g, ' ').trim().slice(0, 60);
    sent.set(label, (sent.get(label) ?? 0) + 1);
  }
  return query.apply(this, args);
} as typeof pg.Client.prototype.query;

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
  counting = true;
  await new Promise((resolve) => setTimeout(resolve, Number(flags.seconds) * 1_000));
  counting = false;
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
  // The bench's own two counting queries went through pg.Client too.
  const own2 = [...sent].filter(
    ([label]) => label.includes('xact_commit') || label.includes('pg_stat_clear'),
  );
  for (const [label] of own2) sent.delete(label);
  const total = [...sent.values()].reduce((a, b) => a + b, 0);
  console.log(`  statements the nodes sent: ${total} → ${(total / seconds).toFixed(2)}/s`);
  for (const [label, n] of [...sent].sort((a, b) => b[1] - a[1])) {
    console.log(`    ${(n / seconds).toFixed(2)}/s  ${n}×  ${label}`);
  }
} finally {
  await Promise.all(nodes.map((n) => n.stop({ timeout: 1_000 })));
  await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
  await admin.end();
}
