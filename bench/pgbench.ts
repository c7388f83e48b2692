/**
 * The baseline: `pgbench` running a single-row UPDATE (a prepared statement, autocommit) on
 * the same server, against `pgbench -i -s 1` tables (100,000 accounts) in a throw-away
 * database that is created here and dropped afterwards.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { CpuMeter, type CpuWindow } from './cpu.js';

const run = promisify(execFile);

export const UPDATE_SCRIPT = [
  '\\set aid random(1, 100000)',
  'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;',
  '',
].join('\n');

export interface PgbenchOptions {
  readonly connectionString: string;
  readonly pgbench: string;
  readonly seconds: number;
  readonly clients: readonly number[];
  readonly maxThreads: number;
  readonly log: (line: string) => void;
  /** Registers clean-up to run should the process be interrupted before this returns. */
  readonly defer?: (cleanup: () => Promise<void>) => void;
}

export interface PgbenchRun {
  readonly clients: number;
  readonly threads: number;
  readonly tps: number;
  readonly latencyMs: number | undefined;
  readonly transactions: number | undefined;
  readonly failed: number | undefined;
  readonly cpu: CpuWindow;
}

export interface PgbenchReport {
  readonly database: string;
  readonly version: string;
  readonly runs: PgbenchRun[];
  readonly best: PgbenchRun;
}

/** `tps = …`: the figure without connection time (pgbench ≥ 14), else the one excluding it, else the first. */
export function parseTps(output: string): number {
  const lines = [...output.matchAll(/^tps = ([\d.]+)(?: \(([^)]*)\))?/gm)];
  const chosen = lines.find((m) => /without initial connection|excluding/.test(m[2] ?? '')) ?? lines[0];
  if (!chosen) throw new Error(`no "tps = " line in pgbench output:\n${output}`);
  return Number(chosen[1]);
}

function parseNumber(output: string, pattern: RegExp): number | undefined {
  const m = pattern.exec(output);
  return m ? Number(m[1]) : undefined;
}

function withDatabase(connectionString: string, database: string): string {
  const url = new URL(connectionString);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

async function pgbench(path: string, args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await run(path, args, { maxBuffer: 16 * 1024 * 1024 });
    return `${stdout}\n${stderr}`;
  } catch (error) {
    const e = error as { stderr?: string; stdout?: string; message?: string };
    throw new Error(`pgbench ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
  }
}

export async function runPgbench(o: PgbenchOptions): Promise<PgbenchReport> {
  const version = (await pgbench(o.pgbench, ['--version'])).trim();
  const database = `gd_bench_pgbench_${randomBytes(4).toString('hex')}`;
  const url = withDatabase(o.connectionString, database);
  const dir = await mkdtemp(join(tmpdir(), 'gd-bench-'));
  let disposed: Promise<void> | undefined;
  const dispose = (): Promise<void> =>
    (disposed ??= (async () => {
      const admin = new pg.Client({ connectionString: o.connectionString });
      try {
        await admin.connect();
        await admin.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
        o.log(`pgbench: dropped ${database}`);
      } catch (e) {
        o.log(`pgbench: could not drop ${database}: ${String(e)}`);
      } finally {
        await admin.end().catch(() => undefined);
        await rm(dir, { recursive: true, force: true });
      }
    })());
  o.defer?.(dispose);
  try {
    const admin = new pg.Client({ connectionString: o.connectionString });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE "${database}"`);
    } finally {
      await admin.end();
    }
    o.log(`pgbench: initialising ${database} (-i -s 1)`);
    await pgbench(o.pgbench, ['-i', '-s', '1', '-q', url]);
    const script = join(dir, 'update.sql');
    await writeFile(script, UPDATE_SCRIPT);
    const runs: PgbenchRun[] = [];
    for (const clients of o.clients) {
      const threads = Math.max(1, Math.min(o.maxThreads, clients));
      const args = ['-M', 'prepared', '-T', String(o.seconds), '-c', String(clients), '-j', String(threads)];
      o.log(`pgbench: ${args.join(' ')} -f update.sql`);
      const meter = new CpuMeter();
      const output = await pgbench(o.pgbench, [...args, '-f', script, url]);
      const cpu = meter.stop();
      runs.push({
        clients,
        threads,
        tps: parseTps(output),
        latencyMs: parseNumber(output, /^latency average = ([\d.]+) ms/m),
        transactions: parseNumber(output, /^number of transactions actually processed: (\d+)/m),
        failed: parseNumber(output, /^number of failed transactions: (\d+)/m),
        cpu,
      });
    }
    const best = runs.reduce((a, b) => (b.tps > a.tps ? b : a));
    return { database, version, runs, best };
  } finally {
    await dispose();
  }
}
