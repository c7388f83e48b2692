/**
 * `npm run bench` (and `gen-durable bench`): the workloads, each printed as a table and
 * recorded as a JSON line under `bench/results/`, measured next to a `pgbench` single-row
 * UPDATE on the same server and next to peers (graphile-worker, pg-boss) running the same
 * workload on the same database in the same invocation. Run nothing else meanwhile: WAL and
 * CPU are counted for the whole server.
 *
 *   npm run bench -- [--workloads drain,steps,latency,full,rss] [--jobs 20000] [--instances 2000]
 *                    [--concurrency 16,64] [--processes 1,3] [--steps-processes 1]
 *                    [--rate 200] [--latency-seconds 15] [--latency-concurrency 16]
 *                    [--finished 1000000] [--future 200000] [--parked 50000] [--full-concurrency 64]
 *                    [--rss-steps 1000000]
 *                    [--subjects gen-durable,gen-durable+run-ahead,gen-durable+retention-0,graphile-worker,pg-boss]
 *                    [--pgbench-seconds 5] [--skip-pgbench] [--timeout 60] [--rounds 1]
 *
 * Workloads: 1 `drain` (no-op jobs, jobs/s), 2 `steps` (instances of a 5-step machine,
 * steps/s; gen-durable with and without run-ahead, peers chaining jobs), 3 `latency`
 * (insert → step-start at a steady insert rate: p50, p95, p99), 4 `full` (the drain with
 * finished, future and parked rows in the table, as a ratio to the empty table; gen-durable
 * only), 5 `rss` (the worker process's resident set over a run of 1,000,000 steps, 5-step
 * machines run ahead; gen-durable only).
 * --timeout bounds each run (seconds): a subject that has not drained by then is reported on
 * what it finished. --rounds runs each backlog cell (workload, processes, concurrency) that
 * many times, the subjects taking turns; its row is the run with the median steady rate, the
 * ratio the median of the rounds' ratios (each round's runs are minutes apart), and the
 * range of the steady rates is printed beside it.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { positiveInt } from './lib/args.js';
import { num, printTable, ratio } from './lib/format.js';
import { record } from './lib/results.js';
import { median, middleBy } from './lib/stats.js';
import { enableWalInspect } from './lib/wal.js';
import { type PgbenchReport, runPgbench } from './pgbench.js';
import { SUBJECTS } from './subjects/index.js';
import { CHAIN_LENGTH, type Workload } from './subjects/subject.js';
import { type BacklogRun, runBacklog } from './workloads/backlog.js';
import { type LatencyRun, runLatency } from './workloads/latency.js';

const USAGE = `usage: npm run bench -- [--workloads drain,steps,latency,full,rss] [--jobs N] [--instances N]
                        [--concurrency 16,64] [--processes 1,3] [--steps-processes 1]
                        [--rate 200] [--latency-seconds 15] [--latency-concurrency 16]
                        [--subjects ${Object.keys(SUBJECTS).join(',')}]
                        [--pgbench-seconds S] [--skip-pgbench] [--timeout S] [--rounds N]`;

const { values: flags } = parseArgs({
  options: {
    workloads: { type: 'string', default: 'drain,steps,latency,full,rss' },
    finished: { type: 'string', default: '1000000' },
    future: { type: 'string', default: '200000' },
    parked: { type: 'string', default: '50000' },
    'full-concurrency': { type: 'string', default: '64' },
    'rss-steps': { type: 'string', default: '1000000' },
    jobs: { type: 'string', default: '20000' },
    instances: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '16,64' },
    processes: { type: 'string', default: '1,3' },
    'steps-processes': { type: 'string', default: '1' },
    rate: { type: 'string', default: '200' },
    'latency-seconds': { type: 'string', default: '15' },
    'latency-concurrency': { type: 'string', default: '16' },
    subjects: { type: 'string', default: Object.keys(SUBJECTS).join(',') },
    'pgbench-seconds': { type: 'string', default: '5' },
    'skip-pgbench': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '60' },
    rounds: { type: 'string', default: '1' },
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

const WORKLOADS = ['drain', 'steps', 'latency', 'full', 'rss'] as const;
const workloads = flags.workloads.split(',').map((w) => w.trim());
for (const w of workloads)
  if (!(WORKLOADS as readonly string[]).includes(w))
    fail(`--workloads: unknown "${w}" (have ${WORKLOADS.join(', ')})`);
const subjects = flags.subjects
  .split(',')
  .map((s) => SUBJECTS[s.trim()] ?? fail(`--subjects: unknown "${s}"`));
const params = {
  jobs: positive('jobs', flags.jobs),
  instances: positive('instances', flags.instances),
  concurrency: list('concurrency', flags.concurrency),
  processes: list('processes', flags.processes),
  stepsProcesses: list('steps-processes', flags['steps-processes']),
  rate: positive('rate', flags.rate),
  latencySeconds: positive('latency-seconds', flags['latency-seconds']),
  latencyConcurrency: positive('latency-concurrency', flags['latency-concurrency']),
  fill: {
    finished: positive('finished', flags.finished),
    future: positive('future', flags.future),
    parked: positive('parked', flags.parked),
  },
  fullConcurrency: positive('full-concurrency', flags['full-concurrency']),
  rssSteps: positive('rss-steps', flags['rss-steps']),
  pgbenchSeconds: positive('pgbench-seconds', flags['pgbench-seconds']),
  timeoutMs: positive('timeout', flags.timeout) * 1000,
  rounds: positive('rounds', flags.rounds),
};

const connectionString = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PGBENCH = process.env.PGBENCH ?? '/usr/bin/pgbench';
const log = (line: string): void => void process.stderr.write(`· ${line}\n`);

const admin = new pg.Pool({ connectionString, max: 1 });
const { rows: versionRows } = await admin.query<{ v: string }>(
  "SELECT current_setting('server_version') AS v",
);
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

for (const workload of (['drain', 'steps'] as const).filter((w) => workloads.includes(w))) {
  const runs: RoundRun[] = [];
  const count = workload === 'drain' ? params.jobs : params.instances;
  for (const processes of workload === 'drain' ? params.processes : params.stepsProcesses) {
    for (const concurrency of params.concurrency) {
      // Rounds alternate the subjects, so that each round's runs are minutes apart at most.
      for (let round = 1; round <= params.rounds; round++) {
        for (const subject of subjects.filter((s) => s.workloads.includes(workload))) {
          const run = await runBacklog(subject, {
            workload,
            connectionString,
            count,
            concurrency,
            processes,
            walInspect,
            timeoutMs: params.timeoutMs,
          });
          runs.push({ ...run, round });
          await record(workload, { ...run, round, cpu: { ...run.cpu } });
        }
      }
    }
  }
  printBacklog(workload, runs);
}

if (workloads.includes('latency')) {
  const runs: LatencyRun[] = [];
  for (const subject of subjects.filter((s) => s.workloads.includes('latency'))) {
    const run = await runLatency(subject, {
      connectionString,
      rate: params.rate,
      seconds: params.latencySeconds,
      warmupSeconds: 2,
      concurrency: params.latencyConcurrency,
      timeoutMs: params.timeoutMs,
    });
    runs.push(run);
    await record('latency', { ...run, cpu: { ...run.cpu } });
  }
  console.log(
    `\nworkload 3: insert → step start at ${num(params.rate)} inserts/s for ${params.latencySeconds} s after 2 s of warm-up, one worker process, concurrency ${params.latencyConcurrency}`,
  );
  printTable(
    ['subject', 'sent', 'started', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'host cores'],
    runs.map((r) => [
      r.subject,
      num(r.sent),
      num(r.started),
      num(r.p50, 2),
      num(r.p95, 2),
      num(r.p99, 2),
      num(r.max, 1),
      num(r.cpu.hostBusy, 2),
    ]),
  );
  console.log('  sent: just before the insert is issued; started: as the job begins (CLOCK_MONOTONIC)');
}

if (workloads.includes('full')) {
  const rows: string[][] = [];
  for (const subject of subjects.filter((s) => s.fill !== undefined)) {
    const base = {
      workload: 'drain' as const,
      connectionString,
      count: params.jobs,
      concurrency: params.fullConcurrency,
      processes: 1,
      walInspect,
      timeoutMs: params.timeoutMs,
    };
    const empty = await runBacklog(subject, base);
    const full = await runBacklog(subject, { ...base, fill: params.fill });
    await record('full', { subject: subject.name, empty: { ...empty }, full: { ...full } });
    rows.push([
      subject.name,
      num(empty.steadyRate),
      num(full.steadyRate),
      ratio(full.steadyRate, empty.steadyRate),
      num(full.wal.bytes / full.done),
      num(empty.wal.bytes / empty.done),
      num((full.fill?.ms ?? 0) / 1000, 1),
    ]);
  }
  const { finished, future, parked } = params.fill;
  console.log(
    `\nworkload 4: drain ${num(params.jobs)} no-op jobs at concurrency ${params.fullConcurrency} with ${num(finished)} finished, ${num(future)} future-scheduled (in the same queue) and ${num(parked)} parked rows in the table (vacuumed, analysed), against the empty table`,
  );
  printTable(
    ['subject', 'empty steady/s', 'full steady/s', 'full ÷ empty', 'WAL B/job full', 'empty', 'fill s'],
    rows,
  );
}

if (workloads.includes('rss')) {
  const subject = SUBJECTS['gen-durable+run-ahead']!;
  const run = await runBacklog(subject, {
    workload: 'steps',
    connectionString,
    count: Math.ceil(params.rssSteps / CHAIN_LENGTH),
    concurrency: params.fullConcurrency,
    processes: 1,
    walInspect,
    timeoutMs: Math.max(params.timeoutMs, 1_800_000),
  });
  const series = run.rssSeries.filter(([, mib]) => Number.isFinite(mib));
  const at = (share: number) =>
    share >= 1 ? series.at(-1)?.[1] : series.find(([done]) => done >= share * run.units)?.[1];
  // Least squares over the second half of the run, MiB per 100,000 steps: the steady trend.
  const half = series.filter(([done]) => done >= run.units / 2);
  const n = half.length;
  const mx = half.reduce((a, [x]) => a + x, 0) / n;
  const my = half.reduce((a, [, y]) => a + y, 0) / n;
  const slope =
    half.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / half.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  await record('rss', { ...run, cpu: { ...run.cpu }, slopeMiBPer100k: slope * 100_000 });
  console.log(
    `\nworkload 5: worker process RSS over ${num(run.done)} steps (${num(run.count)} 5-step instances run ahead, concurrency ${params.fullConcurrency}), ${num(run.steadyRate)} steps/s`,
  );
  printTable(
    ['at 10%', 'at 25%', 'at 50%', 'at 75%', 'at 100%', 'trend, 2nd half'],
    [
      [
        ...[0.1, 0.25, 0.5, 0.75, 1].map((s) => `${num(at(s), 1)} MiB`),
        `${slope * 100_000 >= 0 ? '+' : ''}${num(slope * 100_000, 2)} MiB / 100k steps`,
      ],
    ],
  );
}

await admin.end();

/** The gen-durable subject the others are compared with: run-ahead's where it ran. */
function referenceOf(runs: readonly BacklogRun[]): string {
  return runs.some((r) => r.subject === 'gen-durable+run-ahead') ? 'gen-durable+run-ahead' : 'gen-durable';
}

/** A backlog run and the round of its cell it was (1 unless `--rounds`). */
type RoundRun = BacklogRun & { readonly round: number };

function printBacklog(workload: Workload, all: readonly RoundRun[]): void {
  const unit = workload === 'drain' ? 'job' : 'step';
  const cellOf = (r: BacklogRun): string => `${r.processes}/${r.concurrency}`;
  // One row per subject and cell: the round with the median steady rate.
  const groups = new Map<string, RoundRun[]>();
  for (const r of all) {
    const key = `${r.subject}@${cellOf(r)}`;
    const group = groups.get(key);
    if (group) group.push(r);
    else groups.set(key, [r]);
  }
  const runs = [...groups.values()].map((g) => ({ run: middleBy(g, (r) => r.steadyRate), rounds: g }));
  const rounds = params.rounds;
  console.log(
    workload === 'drain'
      ? `\nworkload 1: drain ${num(params.jobs)} no-op jobs (steady: 10%→90% of the drain, from when every process is ready; wall: spawn → last done)`
      : `\nworkload 2: ${num(params.instances)} instances of a 5-step machine, steps/s (peers chain jobs; steady: 10%→90%)`,
  );
  const reference = referenceOf(all);
  const perJob = (n: number | undefined, r: BacklogRun): string =>
    n === undefined ? 'n/a' : num(n / r.done, 2);
  const tpsAt = (c: number): number | undefined =>
    baseline?.runs.find((b) => b.clients === Math.min(c, 64))?.tps;
  /** The reference's steady rate ÷ this subject's, round by round: the median. */
  const ratioOf = (r: BacklogRun, mine: readonly RoundRun[]): number | undefined => {
    const theirs = all.filter((o) => o.subject === reference && cellOf(o) === cellOf(r));
    const ratios = mine.flatMap((m) => {
      const gd = theirs.find((o) => o.round === m.round);
      return gd ? [gd.steadyRate / m.steadyRate] : [];
    });
    return ratios.length > 0 ? median(ratios) : undefined;
  };
  const rows = runs.map(({ run: r, rounds: mine }) => {
    const range = mine.map((m) => m.steadyRate);
    return [
      r.done < r.units
        ? `${r.subject} (${num((100 * r.done) / r.units)}% in ${num(r.wallMs / 1000)} s)`
        : r.subject,
      String(r.processes),
      String(r.concurrency),
      num(r.steadyRate),
      ...(rounds > 1 ? [`${num(Math.min(...range))}–${num(Math.max(...range))}`] : []),
      num(r.wallRate),
      num(r.readyMs / 1000, 2),
      r.subject === reference ? '' : ratio(ratioOf(r, mine), 1),
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
      ...(rounds > 1 ? [`of ${rounds} rounds`] : []),
      'wall/s',
      'ready s',
      `${reference === 'gen-durable' ? 'gd' : 'gd+ra'} ×`,
      '÷ pgbench',
      `WAL B/${unit}`,
      'w/o FPI',
      `idx ins/${unit}`,
      `upd/${unit}`,
      `HOT/${unit}`,
      'host cores',
      'RSS MiB',
    ],
    rows,
  );
  console.log(
    rounds > 1
      ? `  each row: the median of ${rounds} rounds by steady rate; ${reference}'s steady rate ÷ this subject's in the same round, the median over the rounds`
      : `  ${reference} steady rate ÷ this subject's, same concurrency and processes`,
  );
  console.log('  settings:');
  const seen = new Set<string>();
  for (const { run: r } of runs) {
    const line = `    ${r.subject} c=${r.concurrency} ×${r.processes}: ${Object.entries(r.settings)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`;
    if (!seen.has(line)) console.log(line);
    seen.add(line);
  }
}
