// The bench's machines, in plain JavaScript on the compiled package (dist/), as a production
// deployment would run them: worker threads import them with no TypeScript loader involved.
import { z } from 'zod';
import { defineJob, defineMachine, done, next } from '../dist/index.js';

export const BENCH_QUEUE = 'bench';

/** Does nothing: what is measured is the engine's claim → thread → commit path. */
export const noop = defineJob({
  module: import.meta.url,
  name: 'bench-noop',
  queue: BENCH_QUEUE,
  args: z.object({ i: z.number().int() }),
  perform: () => null,
});

/** The steps of the 5-step machines, in order: each does nothing but move on. */
export const CHAIN_STEPS = ['a', 'b', 'c', 'd', 'e'];

function chainOf(name, inline) {
  return defineMachine({
    module: import.meta.url,
    name,
    queue: BENCH_QUEUE,
    inline,
    state: z.object({ i: z.number().int() }),
    initial: 'a',
    steps: {
      a: (s) => next('b', s),
      b: (s) => next('c', s),
      c: (s) => next('d', s),
      d: (s) => next('e', s),
      e: () => done(),
    },
  });
}

/** Five no-op steps, each committed and picked again. */
export const chain = chainOf('bench-chain', false);
/** The same five steps run ahead: each committed, then the next started on the same claim. */
export const chainAhead = chainOf('bench-chain-ahead', true);

/** Where latency jobs record themselves: one row per job started. */
export const LATENCY_TABLE = 'bench_latency_runs';

/** The statement a latency job records itself with: `$1` sent, `$2` started. */
export function latencyInsert(schema) {
  return `INSERT INTO "${schema}".${LATENCY_TABLE} (sent, started) VALUES ($1, $2)`;
}

/** A clock every process and thread of this machine shares (CLOCK_MONOTONIC), in ms. */
export function monotonicMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

let latencyPool;
/**
 * Records when it was sent and when it started (the latency workload), on a connection of
 * its own thread; `BENCH_URL` and `BENCH_SCHEMA` come from the worker process's environment.
 */
export const latencyProbe = defineJob({
  module: import.meta.url,
  name: 'bench-latency',
  queue: BENCH_QUEUE,
  args: z.object({ sent: z.number() }),
  perform: async ({ sent }) => {
    const started = monotonicMs();
    const pg = (await import('pg')).default;
    latencyPool ??= new pg.Pool({ connectionString: process.env.BENCH_URL, max: 1 });
    await latencyPool.query(latencyInsert(process.env.BENCH_SCHEMA), [sent, started]);
    return null;
  },
});
