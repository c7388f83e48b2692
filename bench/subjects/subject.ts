/**
 * A system the bench runs a workload with: gen-durable, or a peer. The parent process
 * prepares the work and watches the table; the workers run in child processes
 * (`bench/subjects/child.ts`), so one node or several are measured the same way.
 *
 * Workloads, in units the parent counts down:
 * - `drain`: no-op jobs (a unit is a job);
 * - `steps`: instances of a 5-step machine whose steps do nothing (a unit is a step); peers
 *   chain jobs, each step's job adding the next one's.
 * - `latency`: jobs inserted one at a time at a steady rate while the workers wait; each
 *   job, as it starts, records when it was sent and when it started (`LATENCY_TABLE`).
 */
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { LATENCY_TABLE } from '../jobs.mjs';

export type Workload = 'drain' | 'steps' | 'latency';

/** Steps of one instance of the `steps` workload. */
export const CHAIN_LENGTH = 5;

export interface RunSettings {
  readonly workload: Workload;
  /** Jobs (steps) of user code running at once, per process. */
  readonly concurrency: number;
  /** Worker processes working together (connections are shared out between them). */
  readonly processes: number;
}

export interface Subject {
  readonly name: string;
  /** The workloads it runs. */
  readonly workloads: readonly Workload[];
  /** How it is tuned for a run at these settings, as printed next to its figures. */
  settings(s: RunSettings): Record<string, string | number | boolean>;
  /** A fresh schema holding `count` jobs (drain) or instances (steps), ready to run. */
  prepare(db: pg.Pool, schema: string, workload: Workload, count: number): Promise<void>;
  /**
   * Units not finished yet (one statement). The parent reads it once a second and, once the
   * workers report all units finished, until it says none is left: it ends the run.
   */
  remaining(db: pg.Pool, schema: string, workload: Workload): Promise<number>;
  /**
   * In a child process: starts working; resolves to a function that stops. Calls `finished`
   * with the units it finished as it finishes them, counted where the subject learns of it
   * (gen-durable: outcomes committed; peers: jobs returned from their task function), so that
   * the parent follows the run without a count over the table every few milliseconds (at
   * 20,000 rows and more, such a count costs the server more than the work between two polls).
   */
  work(
    connectionString: string,
    schema: string,
    s: RunSettings,
    finished: (units: number) => void,
  ): Promise<() => Promise<void>>;
  /**
   * Workload 4: adds rows that are not work around a drain's backlog, in its table and
   * queue: finished ones, ones due a day from now, parked ones. Only gen-durable has it.
   */
  fill?(
    db: pg.Pool,
    schema: string,
    sizes: { finished: number; future: number; parked: number },
  ): Promise<void>;
  /** Inserts latency jobs one at a time, as its users would (`latency`), carrying `sent`. */
  producer(db: pg.Pool, schema: string): Promise<Producer>;
}

export interface Producer {
  /** Inserts one latency job whose payload is `{ sent }` (see `monotonicMs`). */
  send(sent: number): Promise<void>;
  close(): Promise<void>;
}

export const NOOP_JOBS = 'bench_noop';
/** The peers' chained job: payload `{ i, step }`, step 1 … CHAIN_LENGTH. */
export const CHAIN_JOBS = 'bench_chain';

/** The peers' latency job: payload `{ sent }`. */
export const LATENCY_JOBS = 'bench_latency';

// Defined once, in the plain-JavaScript module worker threads import too.
export { LATENCY_TABLE, latencyInsert, monotonicMs } from '../jobs.mjs';

export function latencyTableDdl(schema: string): string {
  return `CREATE TABLE "${schema}".${LATENCY_TABLE} (sent float8 NOT NULL, started float8 NOT NULL)`;
}

/** A fresh schema name for one run of `subject`. */
export function runSchema(subject: Pick<Subject, 'name'>): string {
  return `bench_${subject.name.replace(/[^a-z]/g, '_')}_${randomBytes(3).toString('hex')}`;
}

/** How many units `count` jobs or instances of `workload` are. */
export function unitsOf(workload: Workload, count: number): number {
  return workload === 'steps' ? count * CHAIN_LENGTH : count;
}

export async function countOf(db: pg.Pool, sql: string): Promise<number> {
  const { rows } = await db.query<{ n: string | null }>(sql);
  return Number(rows[0]?.n ?? 0);
}
