/**
 * pg-boss 10 (the last line that runs on Node 20), tuned as its docs advise for throughput:
 * several workers per process (`work()` called more than once), each fetching and
 * completing its jobs in batches (`batchSize`); no maintenance or scheduling in the drain.
 * Its 5-step machine is a chain of jobs: each fetched batch inserts the next steps' jobs.
 */
import PgBoss from 'pg-boss';
import pg from 'pg';
import {
  CHAIN_JOBS,
  CHAIN_LENGTH,
  LATENCY_JOBS,
  NOOP_JOBS,
  type RunSettings,
  type Subject,
  countOf,
  latencyInsert,
  monotonicMs,
} from './subject.js';

const CHUNK = 5_000;
const WORKERS = 4;

function shape({ concurrency }: RunSettings): { workers: number; batchSize: number } {
  const workers = Math.min(WORKERS, concurrency);
  return { workers, batchSize: Math.max(1, Math.floor(concurrency / workers)) };
}

function boss(connectionString: string, schema: string, max: number): PgBoss {
  return new PgBoss({ connectionString, schema, max, supervise: false, schedule: false });
}

export const pgBoss: Subject = {
  name: 'pg-boss',
  workloads: ['drain', 'steps', 'latency'],
  settings: (s) => {
    const { workers, batchSize } = shape(s);
    return { workers, batchSize, pollingIntervalSeconds: 0.5, supervise: false, poolMax: workers + 2 };
  },
  async prepare(db, schema, workload, jobs) {
    const url = (db.options as { connectionString: string }).connectionString;
    const b = boss(url, schema, 4);
    b.on('error', (e: unknown) => process.stderr.write(`pg-boss error: ${String(e)}\n`));
    await b.start();
    try {
      await b.createQueue(NOOP_JOBS);
      await b.createQueue(CHAIN_JOBS);
      await b.createQueue(LATENCY_JOBS);
      for (let from = 0; from < jobs; from += CHUNK) {
        const n = Math.min(CHUNK, jobs - from);
        await b.insert(
          Array.from({ length: n }, (_, k) =>
            workload === 'drain'
              ? { name: NOOP_JOBS, data: { i: from + k } }
              : { name: CHAIN_JOBS, data: { i: from + k, step: 1 } },
          ),
        );
      }
    } finally {
      await b.stop({ graceful: false, wait: true });
    }
  },
  remaining: (db, schema, workload) =>
    countOf(
      db,
      `SELECT ${workload === 'drain' ? 'count(*)' : `sum(${CHAIN_LENGTH + 1} - (data->>'step')::int)`} AS n
       FROM "${schema}".job WHERE state IN ('created', 'retry', 'active')`,
    ),
  async work(connectionString, schema, s, finished) {
    const { workers, batchSize } = shape(s);
    const b = boss(connectionString, schema, workers + 2);
    b.on('error', (e: unknown) => process.stderr.write(`pg-boss error: ${String(e)}\n`));
    await b.start();
    const side = new pg.Pool({ connectionString, max: 1 });
    const queue = { drain: NOOP_JOBS, steps: CHAIN_JOBS, latency: LATENCY_JOBS }[s.workload];
    const handler =
      s.workload === 'drain'
        ? (jobs: readonly unknown[]) => {
            finished(jobs.length);
            return Promise.resolve();
          }
        : s.workload === 'latency'
          ? async (jobs: ReadonlyArray<{ data: object }>) => {
              const started = monotonicMs();
              for (const j of jobs)
                await side.query(latencyInsert(schema), [(j.data as { sent: number }).sent, started]);
            }
          : async (jobs: ReadonlyArray<{ data: object }>) => {
              const next = jobs
                .map((j) => j.data as { i: number; step: number })
                .filter((d) => d.step < CHAIN_LENGTH)
                .map((d) => ({ name: CHAIN_JOBS, data: { i: d.i, step: d.step + 1 } }));
              if (next.length > 0) await b.insert(next);
              finished(jobs.length);
            };
    for (let i = 0; i < workers; i++) {
      await b.work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, handler);
    }
    return async () => {
      await b.stop({ graceful: true, wait: true, timeout: 10_000 });
      await side.end();
    };
  },
  async producer(db, schema) {
    const url = (db.options as { connectionString: string }).connectionString;
    const b = boss(url, schema, 2);
    b.on('error', (e: unknown) => process.stderr.write(`pg-boss error: ${String(e)}\n`));
    await b.start();
    return {
      send: async (sent) => void (await b.send(LATENCY_JOBS, { sent })),
      close: () => b.stop({ graceful: false, wait: true }),
    };
  },
};
