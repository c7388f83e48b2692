/**
 * A system the bench drains no-op jobs with: gen-durable, or a peer. The parent process
 * prepares the jobs and watches the table; the workers run in child processes
 * (`bench/subjects/child.ts`), so one node or several are measured the same way.
 */
import type pg from 'pg';

export interface DrainSettings {
  /** Jobs (steps) of user code running at once, per process. */
  readonly concurrency: number;
  /** Worker processes draining together (connections are shared out between them). */
  readonly processes: number;
}

export interface Subject {
  readonly name: string;
  /** How it is tuned for a run at this concurrency, as printed next to its figures. */
  settings(s: DrainSettings): Record<string, string | number | boolean>;
  /** A fresh schema holding `jobs` no-op jobs, ready to run. */
  prepare(db: pg.Pool, schema: string, jobs: number): Promise<void>;
  /** Jobs not finished yet (one cheap statement; the parent polls it). */
  remaining(db: pg.Pool, schema: string): Promise<number>;
  /** In a child process: starts working the jobs; resolves to a function that stops. */
  work(connectionString: string, schema: string, s: DrainSettings): Promise<() => Promise<void>>;
}

export const NOOP_JOBS = 'bench_noop';

export async function countOf(db: pg.Pool, sql: string): Promise<number> {
  const { rows } = await db.query<{ n: string }>(sql);
  return Number(rows[0]?.n ?? 0);
}
