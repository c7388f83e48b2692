/**
 * gen-durable itself, as users run it: the compiled package (`npm run bench` builds it).
 * Three subjects: plain; with run-ahead (its 5-step machine runs each next step ahead on
 * the claim it holds), for the steps only; and keeping no finished row (`retention: 0`), for
 * the drain only.
 */
import diagnostics from 'node:diagnostics_channel';
import pg from 'pg';
import { CHAIN_STEPS, chain, chainAhead, latencyProbe, noop } from '../jobs.mjs';
import { CHAIN_LENGTH, type RunSettings, type Subject, type Workload, countOf } from './subject.js';

const compiled = new URL('../../dist/index.js', import.meta.url).href;
type Engine = typeof import('../../index.js');
const engine = (): Promise<Engine> => import(compiled) as Promise<Engine>;
// The feeder limits the node derives from a queue's options, for the settings printed.
const { feederLimits } = (await import(
  new URL('../../dist/cluster/queue-runtime.js', import.meta.url).href
)) as typeof import('../../cluster/queue-runtime.js');

const THREADS = 2;
const CHUNK = 5_000;

/** Steps left of a row at `step` (its own included). */
const STEPS_LEFT = `CASE step ${CHAIN_STEPS.map((s, i) => `WHEN '${s}' THEN ${CHAIN_LENGTH - i}`).join(' ')} END`;

/**
 * `runAhead`: the 5-step machine runs each next step ahead (steps only). `keepNothing`: GC's
 * `retention: 0`, a row that ends done deleted as it ends (drain only).
 */
function engineSubject(name: string, { runAhead = false, keepNothing = false } = {}): Subject {
  const machine = runAhead ? chainAhead : chain;
  return {
    name,
    workloads: runAhead ? ['steps'] : keepNothing ? ['drain'] : ['drain', 'steps', 'latency'],
    settings: ({ concurrency }: RunSettings) => ({
      concurrency,
      threads: THREADS,
      ...(({ claimAhead, batchSize }) => ({
        claimAhead: `default (≤ ${claimAhead})`,
        batchSize: `default (${batchSize})`,
      }))(feederLimits({ concurrency })),
      flushBatch: 'default (1000)',
      inline: runAhead,
      ...(keepNothing ? { gc: '{ retention: 0 }' } : {}),
    }),
    async prepare(db: pg.Pool, schema: string, workload: Workload, count: number) {
      const { migrate, createClient } = await engine();
      await migrate({ pool: db, schema });
      const client = createClient({ pool: db, schema });
      for (let from = 0; from < count; from += CHUNK) {
        const n = Math.min(CHUNK, count - from);
        const is = Array.from({ length: n }, (_, k) => from + k);
        await client.insertAll(
          workload === 'drain'
            ? is.map((i) => ({ machine: noop, args: { i } }))
            : is.map((i) => ({ machine, state: { i } })),
        );
      }
      await client.close();
    },
    // Due now or running, through the pick's and the leases' indexes: rows due a day from now
    // (workload 4) are neither counted nor read.
    remaining: (db, schema, workload) =>
      countOf(
        db,
        `SELECT (SELECT ${workload === 'drain' ? 'count(*)' : `coalesce(sum(${STEPS_LEFT}), 0)`} FROM "${schema}".gen_durable
                 WHERE queue = '${noop.queue}' AND priority = 0 AND status = 'runnable' AND eligible_at <= now())
              + (SELECT ${workload === 'drain' ? 'count(*)' : `coalesce(sum(${STEPS_LEFT}), 0)`} FROM "${schema}".gen_durable
                 WHERE status = 'executing') AS n`,
      ),
    async fill(db, schema, { finished, future, parked }) {
      const t = `"${schema}".gen_durable`;
      const row = `'${noop.name}', 'perform', '{"i":-1}', '${noop.queue}'`;
      await db.query(
        `INSERT INTO ${t} (fsm, step, state, queue, status, result, inserted_at, updated_at)
         SELECT ${row}, 'done', 'null', now() - interval '2 hours', now() - interval '1 hour'
         FROM generate_series(1, $1)`,
        [finished],
      );
      await db.query(
        `INSERT INTO ${t} (fsm, step, state, queue, status, eligible_at)
         SELECT ${row}, 'runnable', now() + interval '1 day' + g * interval '1 second' FROM generate_series(1, $1) g`,
        [future],
      );
      await db.query(
        `INSERT INTO ${t} (fsm, step, state, queue, status, eligible_at, awaiting)
         SELECT ${row}, 'awaiting_signal', 'infinity', '{never}' FROM generate_series(1, $1)`,
        [parked],
      );
    },
    async work(connectionString, schema, { concurrency }, finished) {
      const { Cluster } = await engine();
      // A unit (a job, a step) is finished when its outcome is committed.
      const flushed = (e: unknown): void => finished((e as { applied: number }).applied);
      diagnostics.subscribe('gen_durable:flush', flushed);
      const node = await Cluster.join({
        connectionString,
        schema,
        migrate: false,
        machines: [noop, machine, latencyProbe],
        queues: { [noop.queue]: { concurrency, threads: THREADS } },
        ...(keepNothing ? { gc: { retention: 0 } } : {}),
      });
      return async () => {
        await node.stop({ timeout: 10_000 });
        diagnostics.unsubscribe('gen_durable:flush', flushed);
      };
    },
    async producer(db, schema) {
      const { createClient } = await engine();
      const client = createClient({ pool: db, schema });
      return {
        send: async (sent) => void (await client.insert(latencyProbe, { args: { sent } })),
        close: () => client.close(),
      };
    },
  };
}

export const genDurable = engineSubject('gen-durable');
export const genDurableRunAhead = engineSubject('gen-durable+run-ahead', { runAhead: true });
export const genDurableKeepNothing = engineSubject('gen-durable+retention-0', { keepNothing: true });

export type { pg };
