/**
 * graphile-worker 0.17, tuned as its performance docs advise for many short jobs: a local
 * queue (jobs fetched and locked in batches, 4 × concurrency) and batched completion
 * (`completeJobBatchDelay: 0`, `failJobBatchDelay: 0`), a pool of max(10, concurrency + 2)
 * connections (fewer per process when several share the server's limit).
 */
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import { type DrainSettings, NOOP_JOBS, type Subject, countOf } from './subject.js';

const CHUNK = 5_000;

/** Connections all worker processes of a run may hold together (the server allows 100). */
const CONNECTIONS = 80;

function preset(connectionString: string, schema: string, { concurrency, processes }: DrainSettings) {
  return {
    connectionString,
    schema,
    concurrentJobs: concurrency,
    // As advised (10 or concurrency + 2), within the server's connection limit.
    maxPoolSize: Math.min(Math.max(10, concurrency + 2), Math.floor(CONNECTIONS / processes)),
    pollInterval: 2_000,
    localQueue: { size: 4 * concurrency },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  };
}

export const graphileWorker: Subject = {
  name: 'graphile-worker',
  settings: (s) => {
    const p = preset('', '', s);
    return {
      concurrentJobs: p.concurrentJobs,
      maxPoolSize: p.maxPoolSize,
      'localQueue.size': p.localQueue.size,
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    };
  },
  async prepare(db, schema, jobs) {
    const url = (db.options as { connectionString: string }).connectionString;
    const utils = await makeWorkerUtils({ connectionString: url, schema });
    try {
      await utils.migrate();
      for (let from = 0; from < jobs; from += CHUNK) {
        const n = Math.min(CHUNK, jobs - from);
        await utils.addJobs(
          Array.from({ length: n }, (_, k) => ({ identifier: NOOP_JOBS, payload: { i: from + k } })),
        );
      }
    } finally {
      await utils.release();
    }
  },
  remaining: (db, schema) => countOf(db, `SELECT count(*) AS n FROM "${schema}"._private_jobs`),
  async work(connectionString, schema, s) {
    const runner = await run({
      noHandleSignals: true,
      taskList: { [NOOP_JOBS]: () => Promise.resolve() },
      preset: { worker: preset(connectionString, schema, s) },
      logger: quietLogger,
    });
    return () => runner.stop();
  },
};

/** Warnings and errors only: its info lines would interleave with the bench's output. */
const quietLogger = new Logger(() => (level: string, message: string) => {
  if (level === 'error' || level === 'warning')
    process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});
