/**
 * `npm run bench` (on the compiled package, built first): how fast does one node drain a backlog of no-op jobs, next to what the same
 * Postgres does with the simplest write there is (pgbench, a single-row UPDATE)?
 *
 * 1. pgbench baseline in a throw-away database: best tps over a few client counts.
 * 2. The engine in a fresh schema: insert N no-op jobs (timed on its own), then time from
 *    `Cluster.join()` until the last of them is committed `done` (counted from the
 *    `gen_durable:flush` diagnostics channel, with a slow `count()` poll as a safety net).
 * 3. A table and `ratio: engine jobs/s ÷ pgbench tps`. The schema and database are dropped.
 *
 * Flags: --jobs 20000 --concurrency 200 --threads 2 --chunk 5000 --pgbench-seconds 5
 *        --pgbench-clients 1,4,8 --pgbench-threads 2 --skip-pgbench --plain --analyze --timeout 300
 *
 * Unless --plain, the node is given a `pg.Pool` (same size as the default, 10) whose `query`
 * is timed per engine statement, which shows where the main thread waits.
 */
import diagnostics from 'node:diagnostics_channel';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { CpuMeter, type CpuWindow } from './cpu.js';
import { positiveInt } from './lib/args.js';
import { num } from './lib/format.js';
import { type StatementStats, instrumentPool } from './instrument.js';
import { BENCH_QUEUE, noop } from './jobs.mjs';
import { type PgbenchReport, UPDATE_SCRIPT, runPgbench } from './pgbench.js';

// The engine as users run it: the compiled package (`npm run bench` builds it first).
const compiled = new URL('../dist/index.js', import.meta.url).href;
const { Cluster, createClient, migrate } = (await import(compiled)) as typeof import('../index.js');

const USAGE = `usage: npm run bench -- [--jobs N] [--concurrency C] [--threads T] [--chunk N]
                        [--pgbench-seconds S] [--pgbench-clients 1,4,8] [--pgbench-threads J]
                        [--skip-pgbench] [--plain] [--analyze] [--rate-limited] [--timeout S]
  --plain    join with connectionString instead of an instrumented pg.Pool (no statement timings)
  --analyze  ANALYZE the engine table after inserting, before the drain
  --rate-limited  every job names one rate limit, declared far above the drain's rate (the
             admission's cost: every pick runs the guarded claim and debits the bucket)`;

const { values: flags } = parseArgs({
  options: {
    jobs: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '200' },
    threads: { type: 'string', default: '2' },
    chunk: { type: 'string', default: '5000' },
    'pgbench-seconds': { type: 'string', default: '5' },
    'pgbench-clients': { type: 'string', default: '1,4,8' },
    'pgbench-threads': { type: 'string', default: '2' },
    'skip-pgbench': { type: 'boolean', default: false },
    plain: { type: 'boolean', default: false },
    analyze: { type: 'boolean', default: false },
    'rate-limited': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '300' },
    'batch-size': { type: 'string' },
    'claim-ahead': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (flags.help) {
  console.log(USAGE);
  process.exit(0);
}

const params = {
  jobs: positiveInt('jobs', flags.jobs, USAGE),
  concurrency: positiveInt('concurrency', flags.concurrency, USAGE),
  threads: positiveInt('threads', flags.threads, USAGE),
  chunk: positiveInt('chunk', flags.chunk, USAGE),
  pgbenchSeconds: positiveInt('pgbench-seconds', flags['pgbench-seconds'], USAGE),
  pgbenchClients: flags['pgbench-clients']
    .split(',')
    .map((c) => positiveInt('pgbench-clients', c.trim(), USAGE)),
  pgbenchThreads: positiveInt('pgbench-threads', flags['pgbench-threads'], USAGE),
  skipPgbench: flags['skip-pgbench'],
  plain: flags.plain,
  analyze: flags.analyze,
  rateLimited: flags['rate-limited'],
  timeoutMs: positiveInt('timeout', flags.timeout, USAGE) * 1000,
  batchSize:
    flags['batch-size'] === undefined ? undefined : positiveInt('batch-size', flags['batch-size'], USAGE),
  claimAhead: flags['claim-ahead'] === undefined ? undefined : Number(flags['claim-ahead']),
};

const connectionString = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const PGBENCH = process.env.PGBENCH ?? '/usr/bin/pgbench';
const schema = `bench_${randomBytes(4).toString('hex')}`;

const log = (line: string): void => void process.stderr.write(`· ${line}\n`);
const ms = (n: number): string => `${num(n, n < 100 ? 1 : 0)} ms`;
/** Cores busy: the host, this process, postgres, and the rest (pgbench's client, anything else). */
const cores = (c: CpuWindow): string =>
  `host ${num(c.hostBusy, 2)}/${c.hostCores}: node ${num(c.node, 2)}` +
  (c.mainThread === undefined ? '' : ` (main thread ${num(c.mainThread, 2)})`) +
  (c.postgres === undefined
    ? ''
    : `, postgres ${num(c.postgres, 2)}, rest ${num(Math.max(0, c.hostBusy - c.node - c.postgres), 2)}`);

// ---------------------------------------------------------------------------------------------
// Clean-up runs once: at the end, on a failure, or on SIGINT/SIGTERM.

const cleanups: Array<() => Promise<void>> = [];
let cleaning: Promise<void> | undefined;
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const fn of cleanups.splice(0).reverse()) {
      await fn().catch((e: unknown) => log(`clean-up: ${String(e)}`));
    }
  })();
  return cleaning;
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    log(`${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

// ---------------------------------------------------------------------------------------------

interface ServerInfo {
  readonly version: string;
  readonly settings: Record<string, string>;
}

async function serverInfo(admin: pg.Client): Promise<ServerInfo> {
  const { rows } = await admin.query<{ version: string }>('SELECT version()');
  const names = ['synchronous_commit', 'fsync', 'shared_buffers', 'max_connections'];
  const settings: Record<string, string> = {};
  for (const name of names) {
    const r = await admin.query<{ v: string }>('SELECT current_setting($1) AS v', [name]);
    settings[name] = r.rows[0]!.v;
  }
  return { version: rows[0]!.version, settings };
}

interface EngineReport {
  readonly insertMs: number;
  readonly joinMs: number;
  readonly firstCommitMs: number;
  /** From calling `Cluster.join()` until the last job was committed `done`. */
  readonly drainMs: number;
  /** Jobs per second between the first and the last commit, the first commit's jobs excluded. */
  readonly steadyRate: number;
  readonly stopMs: number;
  readonly picks: number;
  readonly claimed: number;
  readonly flushes: number;
  readonly outcomes: number;
  readonly maxFlush: number;
  readonly stale: number;
  readonly errors: string[];
  readonly finishedBy: 'diagnostics' | 'poll';
  readonly counts: Array<{ status: string; count: number }>;
  readonly mainThreadUtilization: number;
  readonly loopDelay: { p50: number; p99: number; max: number };
  readonly cpu: CpuWindow;
  readonly statements: ReadonlyMap<string, StatementStats> | undefined;
}

const POOL_SIZE = 10;
/** The rate limit every job names with --rate-limited. */
const BENCH_LIMIT = 'bench';
const LOOP_DELAY_RESOLUTION_MS = 10;

async function runEngine(): Promise<EngineReport> {
  const { jobs, chunk, concurrency, threads } = params;
  log(`engine: migrating schema ${schema}`);
  await migrate({ connectionString, schema });

  // A small separate client: inserts before the node exists, and the safety-net poll.
  const observer = createClient({ pool: new pg.Pool({ connectionString, max: 2 }), schema });
  const observerPool = observer.pool;
  cleanups.push(async () => {
    await observer.close();
    await observerPool.end();
  });

  log(`engine: inserting ${num(jobs)} jobs in chunks of ${num(chunk)}`);
  const insertStart = performance.now();
  for (let from = 0; from < jobs; from += chunk) {
    const n = Math.min(chunk, jobs - from);
    await observer.insertAll(
      Array.from({ length: n }, (_, k) => ({
        machine: noop,
        args: { i: from + k },
        ...(params.rateLimited ? { rateLimit: BENCH_LIMIT } : {}),
      })),
    );
  }
  const insertMs = performance.now() - insertStart;
  if (params.analyze) {
    log('engine: ANALYZE (fresh planner statistics before the drain)');
    await observerPool.query(`ANALYZE "${schema}".gen_durable`);
  }

  // Counters fed by the engine's diagnostics channels (no cost when nobody subscribes).
  let picks = 0;
  let claimed = 0;
  let flushes = 0;
  let outcomes = 0;
  let applied = 0;
  let maxFlush = 0;
  let stale = 0;
  let firstFlushAt: number | undefined;
  let firstFlushApplied = 0;
  let lastFlushAt = 0;
  const errors: string[] = [];
  let finish: ((by: 'diagnostics' | 'poll') => void) | undefined;
  const finished = new Promise<'diagnostics' | 'poll'>((resolve) => (finish = resolve));

  const onPick = (m: unknown): void => {
    picks++;
    claimed += (m as { claimed: number }).claimed;
  };
  const onFlush = (m: unknown): void => {
    const now = performance.now();
    const f = m as { outcomes: number; applied: number };
    flushes++;
    outcomes += f.outcomes;
    applied += f.applied;
    maxFlush = Math.max(maxFlush, f.outcomes);
    if (firstFlushAt === undefined) {
      firstFlushAt = now;
      firstFlushApplied = f.applied;
    }
    lastFlushAt = now;
    if (applied >= jobs) finish?.('diagnostics');
  };
  const onStale = (m: unknown): void => void (stale += (m as { ids: string[] }).ids.length);
  const onError = (m: unknown): void => {
    const e = m as { where: string; message: string };
    if (errors.length < 20) errors.push(`${e.where}: ${e.message}`);
  };
  const channels = {
    'gen_durable:pick': onPick,
    'gen_durable:flush': onFlush,
    'gen_durable:outcome:stale': onStale,
    'gen_durable:node:error': onError,
  };
  for (const [name, fn] of Object.entries(channels)) diagnostics.subscribe(name, fn);
  cleanups.push(async () => {
    for (const [name, fn] of Object.entries(channels)) diagnostics.unsubscribe(name, fn);
    await Promise.resolve();
  });

  let statements: Map<string, StatementStats> | undefined;
  let connection: { connectionString: string } | { pool: pg.Pool; poolSize: number } = { connectionString };
  if (!params.plain) {
    const pool = new pg.Pool({ connectionString, max: POOL_SIZE });
    statements = instrumentPool(pool);
    connection = { pool, poolSize: POOL_SIZE };
    cleanups.push(() => pool.end());
  }

  const delay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
  delay.enable();
  const elu0 = performance.eventLoopUtilization();
  const meter = new CpuMeter();
  const joinStart = performance.now();

  log(`engine: Cluster.join (concurrency ${concurrency}, threads ${threads}); draining`);
  const node = await Cluster.join({
    ...connection,
    schema,
    machines: [noop],
    queues: {
      [BENCH_QUEUE]: {
        concurrency,
        threads,
        ...(params.batchSize === undefined ? {} : { batchSize: params.batchSize }),
        ...(params.claimAhead === undefined ? {} : { claimAhead: params.claimAhead }),
      },
    },
    ...(params.rateLimited
      ? { rateLimits: { [BENCH_LIMIT]: { allowed: 100_000_000, period: '1s', burst: 100_000_000 } } }
      : {}),
  });
  const joinMs = performance.now() - joinStart;
  let stopped = false;
  cleanups.push(async () => {
    if (!stopped) await node.stop({ timeout: 5_000 });
  });

  // Safety net: if the diagnostics never report (a renamed channel, say), count rows.
  let polling = true;
  const poll = (async () => {
    while (polling) {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      if (!polling) break;
      const rows = await observer.count({ queue: BENCH_QUEUE, status: 'done' }).catch(() => []);
      if (rows.reduce((a, r) => a + r.count, 0) >= jobs) finish?.('poll');
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`not drained after ${params.timeoutMs / 1000}s (${applied}/${jobs} applied)`)),
      params.timeoutMs,
    );
  });
  let finishedBy: 'diagnostics' | 'poll';
  try {
    finishedBy = await Promise.race([finished, timedOut]);
  } finally {
    clearTimeout(timer);
    polling = false;
  }
  const drainEnd = finishedBy === 'diagnostics' ? lastFlushAt : performance.now();
  const cpu = meter.stop();
  const drained = statements && new Map([...statements].map(([k, v]) => [k, { ...v }]));
  const mainThreadUtilization = performance.eventLoopUtilization(elu0).utilization;
  delay.disable();
  await poll;

  const counts = (await observer.count({ queue: BENCH_QUEUE })).map((r) => ({
    status: r.status,
    count: r.count,
  }));
  const stopStart = performance.now();
  await node.stop({ timeout: 10_000 });
  stopped = true;
  const stopMs = performance.now() - stopStart;

  const first = firstFlushAt ?? drainEnd;
  return {
    insertMs,
    joinMs,
    firstCommitMs: first - joinStart,
    drainMs: drainEnd - joinStart,
    steadyRate: lastFlushAt > first ? ((applied - firstFlushApplied) / (lastFlushAt - first)) * 1000 : NaN,
    stopMs,
    picks,
    claimed,
    flushes,
    outcomes,
    maxFlush,
    stale,
    errors,
    finishedBy,
    counts,
    mainThreadUtilization,
    // The histogram records the interval between timer ticks: take the resolution off.
    loopDelay: {
      p50: Math.max(0, delay.percentile(50) / 1e6 - LOOP_DELAY_RESOLUTION_MS),
      p99: Math.max(0, delay.percentile(99) / 1e6 - LOOP_DELAY_RESOLUTION_MS),
      max: Math.max(0, delay.max / 1e6 - LOOP_DELAY_RESOLUTION_MS),
    },
    cpu,
    statements: drained,
  };
}

function printTable(rows: ReadonlyArray<readonly [string, string]>): void {
  const width = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) console.log(`  ${k.padEnd(width)}  ${v}`);
}

async function main(): Promise<void> {
  const admin = new pg.Client({ connectionString });
  await admin.connect();
  cleanups.push(() => admin.end());
  cleanups.push(async () => {
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    log(`dropped schema ${schema}`);
  });
  const server = await serverInfo(admin);
  const url = new URL(connectionString);
  url.password = url.password ? '***' : '';

  console.log('gen-durable drain bench');
  printTable([
    ['postgres', server.version],
    [
      'settings',
      Object.entries(server.settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(', '),
    ],
    ['database', `${url.toString()} (engine schema ${schema})`],
    [
      'host',
      `node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), ${os.platform()}`,
    ],
    [
      'engine',
      `jobs=${params.jobs} concurrency=${params.concurrency} threads=${params.threads} ` +
        `insert chunk=${params.chunk}, one node, pool ${POOL_SIZE}` +
        (params.plain ? ' (connectionString)' : ' (instrumented pg.Pool)') +
        (params.rateLimited ? `, every job rate-limited (${BENCH_LIMIT})` : ''),
    ],
    [
      'pgbench',
      params.skipPgbench
        ? 'skipped'
        : `-M prepared -T ${params.pgbenchSeconds} -c ${params.pgbenchClients.join('|')} ` +
          `-j min(c,${params.pgbenchThreads}), -i -s 1, script: ${UPDATE_SCRIPT.trim().replaceAll('\n', ' ; ')}`,
    ],
  ]);
  console.log();

  let baseline: PgbenchReport | undefined;
  if (!params.skipPgbench) {
    baseline = await runPgbench({
      connectionString,
      pgbench: PGBENCH,
      seconds: params.pgbenchSeconds,
      clients: params.pgbenchClients,
      maxThreads: params.pgbenchThreads,
      log,
      defer: (fn) => cleanups.push(fn),
    });
    console.log(`pgbench baseline (${baseline.version})`);
    console.log('  clients  threads         tps   latency   transactions   cpu (cores)');
    for (const r of baseline.runs) {
      console.log(
        `  ${String(r.clients).padStart(7)}  ${String(r.threads).padStart(7)}  ${num(r.tps).padStart(10)}` +
          `  ${(r.latencyMs === undefined ? '?' : `${num(r.latencyMs, 3)} ms`).padStart(8)}` +
          `  ${num(r.transactions ?? NaN).padStart(13)}   ${cores(r.cpu)}`,
      );
    }
    console.log(
      `  best: ${num(baseline.best.tps)} tps (-c ${baseline.best.clients} -j ${baseline.best.threads})`,
    );
    console.log();
  }

  const e = await runEngine();
  const rate = (params.jobs / e.drainMs) * 1000;
  console.log('engine');
  printTable([
    [
      'insert',
      `${num(params.jobs)} jobs: ${ms(e.insertMs)} (${num((params.jobs / e.insertMs) * 1000)} rows/s)`,
    ],
    ['Cluster.join()', ms(e.joinMs)],
    ['first commit', `${ms(e.firstCommitMs)} after join`],
    ['all done', `${ms(e.drainMs)} after join (seen by ${e.finishedBy}) → ${num(rate)} jobs/s`],
    ['steady state', `${num(e.steadyRate)} jobs/s (first commit → last commit)`],
    [
      'picks',
      `${num(e.picks)} claiming ${num(e.claimed)} rows (avg ${num(e.claimed / Math.max(1, e.picks), 1)})`,
    ],
    [
      'commits',
      `${num(e.flushes)} flushes of ${num(e.outcomes)} outcomes (avg ${num(e.outcomes / Math.max(1, e.flushes), 1)}, ` +
        `max ${num(e.maxFlush)}), stale ${e.stale}`,
    ],
    ['main thread', `event-loop utilisation ${num(e.mainThreadUtilization * 100, 1)}% of the drain`],
    ['loop delay', `p50 ${ms(e.loopDelay.p50)}, p99 ${ms(e.loopDelay.p99)}, max ${ms(e.loopDelay.max)}`],
    ['cpu (cores)', cores(e.cpu)],
    ['node.stop()', ms(e.stopMs)],
    ['rows', e.counts.map((c) => `${c.status}=${num(c.count)}`).join(', ') || 'none'],
    ...(e.errors.length > 0 ? ([['errors', e.errors.join(' | ')]] as const) : []),
  ]);
  if (e.statements) {
    const wall = e.drainMs;
    console.log('  statements during the drain (node pool; time includes waiting for a connection):');
    console.log('    kind              count     rows   mean ms    max ms   busy % of drain');
    for (const [kind, s] of [...e.statements].sort((a, b) => b[1].totalMs - a[1].totalMs)) {
      console.log(
        `    ${kind.padEnd(14)} ${num(s.count).padStart(8)} ${num(s.rows).padStart(8)}` +
          ` ${num(s.totalMs / s.count, 2).padStart(9)} ${num(s.maxMs, 1).padStart(9)}` +
          ` ${num((s.totalMs / wall) * 100, 0).padStart(9)}%` +
          (s.failed > 0 ? `  (${s.failed} failed)` : ''),
      );
    }
  }
  const rest = e.cpu.postgres === undefined ? 0 : e.cpu.hostBusy - e.cpu.node - e.cpu.postgres;
  if (rest > 0.3)
    console.log(`  note: ${num(rest, 2)} cores went to other processes during the drain: numbers are noisy`);
  console.log();

  const done = e.counts.find((c) => c.status === 'done')?.count ?? 0;
  const best = baseline?.best.tps;
  console.log('summary');
  printTable([
    ['pgbench best tps (single-row UPDATE)', best === undefined ? 'skipped' : num(best)],
    ['engine jobs/s (join → all done)', num(rate)],
    ['engine jobs/s (steady state)', num(e.steadyRate)],
    ['steady-state ratio', best === undefined ? 'n/a' : num(e.steadyRate / best, 2)],
  ]);
  console.log(`ratio: engine jobs/s ÷ pgbench tps = ${best === undefined ? 'n/a' : num(rate / best, 2)}`);
  if (done !== params.jobs) throw new Error(`expected ${params.jobs} done rows, found ${done}`);
}

try {
  await main();
  await cleanUp();
  process.exit(0);
} catch (error) {
  console.error(error);
  await cleanUp();
  process.exit(1);
}
