/**
 * graphile-worker 0.17, tuned as its performance docs advise for many short jobs: a local
 * queue (jobs fetched and locked in batches, 4 × concurrency) and batched completion
 * (`completeJobBatchDelay: 0`, `failJobBatchDelay: 0`), a pool of max(10, concurrency + 2)
 * connections (fewer per process when several share the server's limit). Its 5-step
 * machine is a chain of jobs: each step's job adds the next one's (`helpers.addJob`).
 */
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
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

/** Connections all worker processes of a run may hold together (the server allows 100). */
const CONNECTIONS = 80;

function preset(connectionString: string, schema: string, { concurrency, processes }: RunSettings) {
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
  workloads: ['drain', 'steps', 'latency'],
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
  async prepare(db, schema, workload, jobs) {
    const url = (db.options as { connectionString: string }).connectionString;
    const utils = await makeWorkerUtils({ connectionString: url, schema });
    try {
      await utils.migrate();
      for (let from = 0; from < jobs; from += CHUNK) {
        const n = Math.min(CHUNK, jobs - from);
        await utils.addJobs(
          Array.from({ length: n }, (_, k) =>
            workload === 'drain'
              ? { identifier: NOOP_JOBS, payload: { i: from + k } }
              : { identifier: CHAIN_JOBS, payload: { i: from + k, step: 1 } },
          ),
        );
      }
    } finally {
      await utils.release();
    }
  },
  remaining: (db, schema, workload) =>
    countOf(
      db,
      `SELECT ${workload === 'drain' ? 'count(*)' : `sum(${CHAIN_LENGTH + 1} - (payload->>'step')::int)`} AS n
       FROM "${schema}"._private_jobs`,
    ),
  async work(connectionString, schema, s, finished) {
    const runner = await run({
      noHandleSignals: true,
      taskList: {
        [NOOP_JOBS]: () => {
          finished(1);
          return Promise.resolve();
        },
        [CHAIN_JOBS]: async (payload, helpers) => {
          const { i, step } = payload as { i: number; step: number };
          if (step < CHAIN_LENGTH) await helpers.addJob(CHAIN_JOBS, { i, step: step + 1 });
          finished(1);
        },
        [LATENCY_JOBS]: async (payload, helpers) => {
          const started = monotonicMs();
          await helpers.query(latencyInsert(schema), [(payload as { sent: number }).sent, started]);
        },
      },
      preset: { worker: preset(connectionString, schema, s) },
      logger: quietLogger,
    });
    return () => runner.stop();
  },
  async producer(db, schema) {
    const url = (db.options as { connectionString: string }).connectionString;
    const utils = await makeWorkerUtils({ connectionString: url, schema });
    return {
      send: async (sent) => void (await utils.addJob(LATENCY_JOBS, { sent })),
      close: async () => {
        await utils.release();
      },
    };
  },
};

/** Warnings and errors only: its info lines would interleave with the bench's output. */
const quietLogger = new Logger(() => (level: string, message: string) => {
  if (level === 'error' || level === 'warning')
    process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});
