/**
 * The backlog workloads, worked off by one subject (gen-durable or a peer) at one
 * concurrency with one or several worker processes:
 * - 1, `drain`: N no-op jobs (units: jobs);
 * - 2, `steps`: N instances of a 5-step machine whose steps do nothing (units: steps; peers
 *   chain jobs).
 * Each run: a fresh schema with the work inserted, a CHECKPOINT (so every run starts with the
 * same full-page-image debt), the worker processes spawned, their progress followed (each
 * reports the units it finished) until the table says no unit is left; then WAL, CPU and
 * rates are read and the schema dropped.
 *
 * Rates: `steady` is the units finished between 10% and 90% of the run, over the time
 * between (interpolated between polls): start-up and the tail are left out, so it compares
 * the loops themselves. With several processes, the first ready drains alone while the
 * others start: the window opens no earlier than the moment every process is ready (if that
 * is later than 10%). `wall` runs from spawning the processes until the last unit is done,
 * start-up (process, imports, connections) included. A run that is not done by the timeout
 * stops there and is reported on the units it finished (steady from 10% to where it got).
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { CpuMeter, type CpuWindow } from '../cpu.js';
import { Progress } from '../lib/progress.js';
import { spawnWorker } from '../lib/workers.js';
import { type WalWindow, walBetween, walLsn } from '../lib/wal.js';
import { type Subject, type Workload, runSchema, unitsOf } from '../subjects/subject.js';

/** Rows that are not work, added to the table before a drain (workload 4). */
export interface FillSizes {
  readonly finished: number;
  readonly future: number;
  readonly parked: number;
}

export interface BacklogParams {
  readonly workload: Workload;
  /** Workload 4: rows added around the backlog (subjects with `fill` only). */
  readonly fill?: FillSizes;
  readonly connectionString: string;
  /** Jobs (drain) or instances (steps) in the backlog. */
  readonly count: number;
  readonly concurrency: number;
  readonly processes: number;
  readonly walInspect: boolean;
  readonly timeoutMs: number;
}

export interface BacklogRun {
  readonly workload: Workload;
  readonly subject: string;
  readonly settings: Record<string, string | number | boolean>;
  /** Jobs (drain) or instances (steps) in the backlog. */
  readonly count: number;
  /** Units to work off: jobs (drain) or steps (steps). */
  readonly units: number;
  readonly concurrency: number;
  readonly processes: number;
  /** Units finished: all of them, unless the run ran out of time. */
  readonly done: number;
  readonly steadyRate: number;
  readonly wallRate: number;
  readonly wallMs: number;
  /** From spawning the processes until every one of them was ready, ms. */
  readonly readyMs: number;
  /** Units finished by then (by the first processes ready). */
  readonly unitsAtReady: number;
  readonly wal: WalWindow;
  readonly cpu: CpuWindow;
  /** Resident set of each worker process when it stopped, MiB. */
  readonly rssMiB: number[];
  /** Rows added around the backlog, if any, and how long adding them took. */
  readonly fill?: FillSizes & { readonly ms: number };
  /** [units done, resident set of the worker processes together in MiB], every ~500 ms. */
  readonly rssSeries: Array<readonly [number, number]>;
}

const POLL_MS = 50;
/** How often the table is counted while the workers still report units to do. */
const COUNT_MS = 1_000;
/** When `done` first reached `target`, interpolated between the polls around it. */
function crossing(samples: ReadonlyArray<readonly [number, number]>, target: number): number {
  for (let i = 1; i < samples.length; i++) {
    const [t1, d1] = samples[i]!;
    if (d1 < target) continue;
    const [t0, d0] = samples[i - 1]!;
    return d1 === d0 ? t1 : t0 + ((target - d0) / (d1 - d0)) * (t1 - t0);
  }
  return samples.at(-1)![0];
}

export async function runBacklog(subject: Subject, p: BacklogParams): Promise<BacklogRun> {
  const schema = runSchema(subject);
  const db = new pg.Pool({ connectionString: p.connectionString, max: 2 });
  try {
    const units = unitsOf(p.workload, p.count);
    await subject.prepare(db, schema, p.workload, p.count);
    let fill: BacklogRun['fill'];
    if (p.fill) {
      if (!subject.fill) throw new Error(`${subject.name} has no full-table workload`);
      const t0 = performance.now();
      await subject.fill(db, schema, p.fill);
      // A table in its steady state: vacuumed and analysed, as autovacuum would leave it.
      const { rows } = await db.query<{ t: string }>(
        `SELECT tablename AS t FROM pg_tables WHERE schemaname = $1`,
        [schema],
      );
      for (const { t } of rows) await db.query(`VACUUM ANALYZE "${schema}"."${t}"`);
      fill = { ...p.fill, ms: performance.now() - t0 };
    }
    await db.query('CHECKPOINT');
    const lsn = await walLsn(db);
    const meter = new CpuMeter();
    const label = `${p.workload} ${subject.name} ×${p.processes} c=${p.concurrency}`;
    const progress = new Progress(label, units);
    const started = performance.now();
    const workers = await Promise.all(
      Array.from({ length: p.processes }, () => spawnWorker(subject, p, schema)),
    );
    const readyAt = performance.now();
    const reported = (): number => workers.reduce((sum, w) => sum + w.finished(), 0);
    const unitsAtReady = Math.min(units - 1, reported());
    const samples: Array<readonly [number, number]> = [
      [started, 0],
      [readyAt, unitsAtReady],
    ];
    const rssSeries: Array<readonly [number, number]> = [];
    let rssAt = 0;
    let left = units;
    let countedAt = started;
    while (left > 0) {
      // Out of time: the run is reported on what was done (marked incomplete), not dropped.
      if (performance.now() - started > p.timeoutMs) break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const reportedNow = reported();
      // The table decides when the run is over (and counts for a subject that reports less).
      if (reportedNow >= units || performance.now() - countedAt >= COUNT_MS) {
        left = await subject.remaining(db, schema, p.workload);
        countedAt = performance.now();
      }
      const finishedNow = left === 0 ? units : Math.min(units - 1, Math.max(reportedNow, units - left));
      samples.push([performance.now(), finishedNow]);
      progress.update(finishedNow);
      if (performance.now() - rssAt >= 500) {
        rssAt = performance.now();
        rssSeries.push([finishedNow, workers.reduce((sum, w) => sum + w.rss(), 0)]);
      }
    }
    progress.done();
    const finished = samples.at(-1)![0];
    const cpu = meter.stop();
    const wal = await walBetween(db, lsn, p.walInspect);
    const rssMiB = await Promise.all(workers.map((w) => w.stop()));
    await Promise.all(workers.map((w) => w.exited));
    const done = units - left;
    const from = Math.max(0.1 * units, unitsAtReady);
    const to = Math.min(0.9 * units, done);
    const tFrom = crossing(samples, from);
    const tTo = crossing(samples, to);
    return {
      workload: p.workload,
      subject: subject.name,
      settings: subject.settings(p),
      count: p.count,
      units,
      concurrency: p.concurrency,
      processes: p.processes,
      done,
      steadyRate:
        to - from >= 0.1 * units
          ? (to - from) / ((tTo - tFrom) / 1000)
          : done / ((finished - started) / 1000),
      wallRate: done / ((finished - started) / 1000),
      wallMs: finished - started,
      readyMs: readyAt - started,
      unitsAtReady,
      wal,
      cpu,
      rssMiB,
      rssSeries,
      ...(fill ? { fill } : {}),
    };
  } finally {
    await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await db.end();
  }
}
