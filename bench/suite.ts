/**
 * `npm run bench` (and `gen-durable bench`): the workloads, each printed as a table and
 * recorded as a JSON line under `bench/results/`, measured next to a `pgbench` single-row
 * UPDATE on the same server and next to peers (graphile-worker, pg-boss) running the same
 * workload on the same database in the same invocation. Run nothing else meanwhile: WAL and
 * CPU are counted for the whole server.
 *
 *   npm run bench -- [--workloads drain] [--jobs 20000] [--concurrency 16,64] [--processes 1,3]
 *                    [--subjects gen-durable,graphile-worker,pg-boss] [--pgbench-seconds 5]
 *                    [--skip-pgbench] [--timeout 60]
 *
 * --timeout bounds each run (seconds): a subject that has not drained by then is reported on
 * what it finished.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { positiveInt } from './lib/args.js';
import { num, printTable, ratio } from './lib/format.js';
import { record } from './lib/results.js';
import { enableWalInspect } from './lib/wal.js';
import { type PgbenchReport, runPgbench } from './pgbench.js';
import { SUBJECTS } from './subjects/index.js';
import { type DrainRun, drainOnce } from './workloads/drain.js';

const USAGE = `usage: npm run bench -- [--workloads drain] [--jobs N] [--concurrency 16,64] [--processes 1,3]
                        [--subjects ${Object.keys(SUBJECTS).join(',')}]
                        [--pgbench-seconds S] [--skip-pgbench] [--timeout S]`;

const { values: flags } = parseArgs({
  options: {
    workloads: { type: 'string', default: 'drain' },
    jobs: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '16,64' },
    processes: { type: 'string', default: '1,3' },
    subjects: { type: 'string', default: Object.keys(SUBJECTS).join(',') },
    'pgbench-seconds': { type: 'string', default: '5' },
    'skip-pgbench': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '60' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});
if (flags.help) {
  console.log(USAGE);
  process.exit(0);
}

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}
const positive = (name: string, raw: string): number => positiveInt(name, raw, USAGE);
const list = (name: string, raw: string): number[] => raw.split(',').map((v) => positive(name, v.trim()));

const WORKLOADS = ['drain'];
const workloads = flags.workloads.split(',').map((w) => w.trim());
for (const w of workloads)
  if (!WORKLOADS.includes(w)) fail(`--workloads: unknown "${w}" (have ${WORKLOADS.join(', ')})`);
const subjects = flags.subjects
  .split(',')
  .map((s) => SUBJECTS[s.trim()] ?? fail(`--subjects: unknown "${s}"`));
const params = {
  jobs: positive('jobs', flags.jobs),
  concurrency: list('concurrency', flags.concurrency),
  processes: list('processes', flags.processes),
  pgbenchSeconds: positive('pgbench-seconds', flags['pgbench-seconds']),
  timeoutMs: positive('timeout', flags.timeout) * 1000,
};

const connectionString = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PGBENCH = process.env.PGBENCH ?? '/usr/bin/pgbench';
const log = (line: string): void => void process.stderr.write(`· ${line}\n`);

const admin = new pg.Pool({ connectionString, max: 1 });
const { rows: versionRows } = await admin.query<{ v: string }>('SHOW server_version');
const walInspect = await enableWalInspect(admin);
console.log(
  `gen-durable bench · Postgres ${versionRows[0]!.v} · ${connectionString.replace(/\/\/[^@]*@/, '//')}`,
);
if (!walInspect) console.log('  (pg_walinspect not available: WAL in bytes only, no per-record breakdown)');

let baseline: PgbenchReport | undefined;
if (!flags['skip-pgbench']) {
  baseline = await runPgbench({
    connectionString,
    pgbench: PGBENCH,
    seconds: params.pgbenchSeconds,
    clients: [...new Set(params.concurrency.map((c) => Math.min(c, 64)))],
    maxThreads: 2,
    log,
  });
  console.log(`\npgbench baseline: single-row UPDATE, prepared, autocommit (${baseline.version})`);
  printTable(
    ['clients', 'tps', 'latency'],
    baseline.runs.map((r) => [String(r.clients), num(r.tps), `${num(r.latencyMs, 2)} ms`]),
  );
  await record('pgbench', { runs: baseline.runs.map(({ cpu: _cpu, ...r }) => r) });
}

if (workloads.includes('drain')) {
  const runs: DrainRun[] = [];
  for (const processes of params.processes) {
    for (const concurrency of params.concurrency) {
      for (const subject of subjects) {
        const run = await drainOnce(subject, {
          connectionString,
          jobs: params.jobs,
          concurrency,
          processes,
          walInspect,
          timeoutMs: params.timeoutMs,
        });
        runs.push(run);
        await record('drain', { ...run, cpu: { ...run.cpu } });
      }
    }
  }
  printDrain(runs);
}

await admin.end();

function printDrain(runs: readonly DrainRun[]): void {
  console.log(
    `\nworkload 1: drain ${num(params.jobs)} no-op jobs (steady: 10%→90% of the drain; wall: spawn → last done)`,
  );
  const perJob = (n: number | undefined, r: DrainRun): string =>
    n === undefined ? 'n/a' : num(n / r.done, 2);
  const tpsAt = (c: number): number | undefined =>
    baseline?.runs.find((b) => b.clients === Math.min(c, 64))?.tps;
  const rows = runs.map((r) => {
    const gd = runs.find(
      (o) => o.subject === 'gen-durable' && o.concurrency === r.concurrency && o.processes === r.processes,
    );
    return [
      r.done < r.jobs
        ? `${r.subject} (${num((100 * r.done) / r.jobs)}% in ${num(r.wallMs / 1000)} s)`
        : r.subject,
      String(r.processes),
      String(r.concurrency),
      num(r.steadyRate),
      num(r.wallRate),
      r.subject === 'gen-durable' ? '' : ratio(gd?.steadyRate, r.steadyRate),
      ratio(r.steadyRate, tpsAt(r.concurrency)),
      num(r.wal.bytes / r.done),
      num((r.wal.bytes - (r.wal.fpiBytes ?? 0)) / r.done),
      perJob(r.wal.indexInserts, r),
      perJob(r.wal.updates, r),
      perJob(r.wal.hotUpdates, r),
      `${num(r.cpu.hostBusy, 2)}`,
      num(Math.max(...r.rssMiB)),
    ];
  });
  printTable(
    [
      'subject',
      'procs',
      'conc',
      'steady/s',
      'wall/s',
      'gd ×',
      '÷ pgbench',
      'WAL B/job',
      'w/o FPI',
      'idx ins/job',
      'upd/job',
      'HOT/job',
      'host cores',
      'RSS MiB',
    ],
    rows,
  );
  console.log("  gd ×: gen-durable steady rate ÷ this subject's, same concurrency and processes");
  console.log('  settings:');
  const seen = new Set<string>();
  for (const r of runs) {
    const line = `    ${r.subject} c=${r.concurrency} ×${r.processes}: ${Object.entries(r.settings)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`;
    if (!seen.has(line)) console.log(line);
    seen.add(line);
  }
}
