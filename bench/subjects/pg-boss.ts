/**
 * pg-boss 10 (the last line that runs on Node 20), tuned as its docs advise for throughput:
 * several workers per process (`work()` called more than once), each fetching and
 * completing its jobs in batches (`batchSize`); no maintenance or scheduling in the drain.
 */
import PgBoss from 'pg-boss';
import { type DrainSettings, NOOP_JOBS, type Subject, countOf } from './subject.js';

const CHUNK = 5_000;
const WORKERS = 4;

function shape({ concurrency }: DrainSettings): { workers: number; batchSize: number } {
  const workers = Math.min(WORKERS, concurrency);
  return { workers, batchSize: Math.max(1, Math.floor(concurrency / workers)) };
}

function boss(connectionString: string, schema: string, max: number): PgBoss {
  return new PgBoss({ connectionString, schema, max, supervise: false, schedule: false });
}

export const pgBoss: Subject = {
  name: 'pg-boss',
  settings: (s) => {
    const { workers, batchSize } = shape(s);
    return { workers, batchSize, pollingIntervalSeconds: 0.5, supervise: false, poolMax: workers + 2 };
  },
  async prepare(db, schema, jobs) {
    const url = (db.options as { connectionString: string }).connectionString;
    const b = boss(url, schema, 4);
    b.on('error', (e: unknown) => process.stderr.write(`pg-boss error: ${String(e)}\n`));
    await b.start();
    try {
      await b.createQueue(NOOP_JOBS);
      for (let from = 0; from < jobs; from += CHUNK) {
        const n = Math.min(CHUNK, jobs - from);
        await b.insert(Array.from({ length: n }, (_, k) => ({ name: NOOP_JOBS, data: { i: from + k } })));
      }
    } finally {
      await b.stop({ graceful: false, wait: true });
    }
  },
  remaining: (db, schema) =>
    countOf(db, `SELECT count(*) AS n FROM "${schema}".job WHERE state IN ('created', 'retry', 'active')`),
  async work(connectionString, schema, s) {
    const { workers, batchSize } = shape(s);
    const b = boss(connectionString, schema, workers + 2);
    b.on('error', (e: unknown) => process.stderr.write(`pg-boss error: ${String(e)}\n`));
    await b.start();
    for (let i = 0; i < workers; i++) {
      await b.work(NOOP_JOBS, { batchSize, pollingIntervalSeconds: 0.5 }, () => Promise.resolve());
    }
    return () => b.stop({ graceful: true, wait: true, timeout: 10_000 });
  },
};
