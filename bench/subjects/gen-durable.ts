/** gen-durable itself, as users run it: the compiled package (`npm run bench` builds it). */
import pg from 'pg';
import { noop } from '../jobs.mjs';
import { type DrainSettings, type Subject, countOf } from './subject.js';

const compiled = new URL('../../dist/index.js', import.meta.url).href;
type Engine = typeof import('../../index.js');
const engine = (): Promise<Engine> => import(compiled) as Promise<Engine>;

const THREADS = 2;
const CHUNK = 5_000;

export const genDurable: Subject = {
  name: 'gen-durable',
  settings: ({ concurrency }: DrainSettings) => ({
    concurrency,
    threads: THREADS,
    claimAhead: `default (≤ ${Math.min(concurrency, 500)})`,
    flushBatch: 'default (1000)',
  }),
  async prepare(db, schema, jobs) {
    const { migrate, createClient } = await engine();
    await migrate({ pool: db, schema });
    const client = createClient({ pool: db, schema });
    for (let from = 0; from < jobs; from += CHUNK) {
      const n = Math.min(CHUNK, jobs - from);
      await client.insertAll(Array.from({ length: n }, (_, k) => ({ machine: noop, args: { i: from + k } })));
    }
    await client.close();
  },
  remaining: (db, schema) =>
    countOf(
      db,
      `SELECT count(*) AS n FROM "${schema}".gen_durable WHERE status IN ('runnable', 'executing')`,
    ),
  async work(connectionString, schema, { concurrency }) {
    const { Cluster } = await engine();
    const node = await Cluster.join({
      connectionString,
      schema,
      migrate: false,
      machines: [noop],
      queues: { [noop.queue]: { concurrency, threads: THREADS } },
    });
    return () => node.stop({ timeout: 10_000 });
  },
};

export type { pg };
