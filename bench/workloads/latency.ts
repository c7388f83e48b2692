/**
 * Workload 3: insert → step-start latency at a steady rate. One worker process waits on an
 * empty queue; the parent inserts one job at a time, `rate` a second for `seconds`, each on
 * its schedule (not after the previous insert returns), through the subject's own client.
 * Each job carries when it was sent (taken just before the insert is issued, so its own
 * round trip counts) and records, as it starts, when that was, on the clock every process
 * and thread of the machine shares (CLOCK_MONOTONIC). The first `warmupSeconds` of inserts
 * warm the worker up (threads, JIT, connections) and are left out; percentiles are over
 * every job sent after them.
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { CpuMeter, type CpuWindow } from '../cpu.js';
import { Progress } from '../lib/progress.js';
import { spawnWorker } from '../lib/workers.js';
import { LATENCY_TABLE, type Subject, latencyTableDdl, monotonicMs, runSchema } from '../subjects/subject.js';

export interface LatencyParams {
  readonly connectionString: string;
  /** Inserts per second. */
  readonly rate: number;
  readonly seconds: number;
  /** Inserts at the same rate before the measured ones, not counted. */
  readonly warmupSeconds: number;
  readonly concurrency: number;
  readonly timeoutMs: number;
}

export interface LatencyRun {
  readonly workload: 'latency';
  readonly subject: string;
  readonly settings: Record<string, string | number | boolean>;
  readonly rate: number;
  readonly warmupSeconds: number;
  /** Jobs sent after the warm-up. */
  readonly sent: number;
  /** Jobs that started before the timeout. */
  readonly started: number;
  /** Insert → start, ms. */
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
  readonly cpu: CpuWindow;
}

/** The `q`-quantile of sorted `xs` (nearest rank). */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return Number.NaN;
  return xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]!;
}

export async function runLatency(subject: Subject, p: LatencyParams): Promise<LatencyRun> {
  const schema = runSchema(subject);
  const db = new pg.Pool({ connectionString: p.connectionString, max: 8 });
  const settings = { workload: 'latency' as const, concurrency: p.concurrency, processes: 1 };
  try {
    await subject.prepare(db, schema, 'latency', 0);
    await db.query(latencyTableDdl(schema));
    const worker = await spawnWorker(subject, { ...settings, connectionString: p.connectionString }, schema);
    const producer = await subject.producer(db, schema);
    const warmup = Math.round(p.rate * p.warmupSeconds);
    const total = warmup + Math.round(p.rate * p.seconds);
    let measuredFrom = Number.POSITIVE_INFINITY;
    const progress = new Progress(`latency ${subject.name} ${p.rate}/s`, total);
    const meter = new CpuMeter();
    const start = performance.now();
    const inserts: Array<Promise<void>> = [];
    for (let k = 0; k < total; k++) {
      const due = start + (k * 1000) / p.rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (k === warmup) measuredFrom = monotonicMs();
      inserts.push(producer.send(monotonicMs()));
      if (k % 50 === 0) progress.update(k);
    }
    await Promise.all(inserts);
    const count = async (): Promise<number> =>
      Number(
        (await db.query<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".${LATENCY_TABLE}`)).rows[0]!.n,
      );
    let started = await count();
    while (started < total && performance.now() - start < p.timeoutMs) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      started = await count();
    }
    progress.done();
    const cpu = meter.stop();
    await producer.close();
    await worker.stop();
    await worker.exited;
    const { rows } = await db.query<{ ms: number }>(
      `SELECT started - sent AS ms FROM "${schema}".${LATENCY_TABLE} WHERE sent >= $1 ORDER BY 1`,
      [measuredFrom],
    );
    const ms = rows.map((r) => r.ms);
    return {
      workload: 'latency',
      subject: subject.name,
      settings: subject.settings(settings),
      rate: p.rate,
      warmupSeconds: p.warmupSeconds,
      sent: total - warmup,
      started: ms.length,
      p50: quantile(ms, 0.5),
      p95: quantile(ms, 0.95),
      p99: quantile(ms, 0.99),
      max: ms.at(-1) ?? Number.NaN,
      cpu,
    };
  } finally {
    await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await db.end();
  }
}
