/**
 * `npm run bench:pool`: the thread boundary alone, no database. One queue's thread pool (the
 * compiled package's `threads/pool.js`) runs N no-op steps with `--concurrency` in flight,
 * fed as the engine feeds it (the rows freed by one turn of the main thread's results go out
 * together on the next), and prints steps/s, the process's CPU per step (main thread, worker
 * threads and V8's helpers together) and the main thread's busy time per step.
 *
 * `--dist <dir>` measures another build (a checkout's `dist/`, say an older commit's in a
 * `git worktree`), so two builds can be run in turns on the same machine.
 *
 * Flags: --steps 200000 --concurrency 64 --threads 2 --rounds 3 --dist dist
 */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { positiveInt } from './lib/args.js';
import { num } from './lib/format.js';
import { noop } from './jobs.mjs';

const USAGE = `usage: npm run bench:pool -- [--steps N] [--concurrency C] [--threads T] [--rounds R] [--dist DIR]`;
const { values: flags } = parseArgs({
  options: {
    steps: { type: 'string', default: '200000' },
    concurrency: { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    dist: { type: 'string', default: new URL('../dist', import.meta.url).pathname },
  },
  strict: true,
});
const steps = positiveInt('steps', flags.steps, USAGE);
const concurrency = positiveInt('concurrency', flags.concurrency, USAGE);
const threads = positiveInt('threads', flags.threads, USAGE);
const rounds = positiveInt('rounds', flags.rounds, USAGE);
const dist = path.resolve(flags.dist);

const load = async <T>(file: string): Promise<T> =>
  (await import(pathToFileURL(path.join(dist, file)).href)) as T;
const { QueuePool } = await load<typeof import('../threads/pool.js')>('threads/pool.js');
const { MachineRegistry } = await load<typeof import('../runtime/registry.js')>('runtime/registry.js');
type StepRequest = import('../runtime/executor.js').StepRequest;

/** One round: every step run, `concurrency` at a time. */
async function round(): Promise<{ perSecond: number; cpuUs: number; mainUs: number }> {
  const pool = new QueuePool({ queue: 'bench', threads, concurrency, registry: new MachineRegistry([noop]) });
  await pool.ready;
  let sent = 0;
  let finished = 0;
  let inFlight = 0;
  let scheduled = false;
  let allDone: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (allDone = resolve));
  const request = (): StepRequest => ({
    id: String(++sent),
    machine: noop.name,
    version: noop.version,
    step: 'perform',
    state: '{"args":{"i":1}}',
    attempt: 0,
    maxAttempts: 20,
    correlationKey: null,
    inbox: null,
    awaiting: null,
    timedOut: false,
    children: null,
  });
  const dispatch = (): void => {
    scheduled = false;
    const n = Math.min(concurrency - inFlight, steps - sent);
    if (n <= 0) return;
    const batch = Array.from({ length: n }, request);
    inFlight += n;
    pool.execute(batch, onResult);
  };
  const onResult = (): void => {
    inFlight--;
    if (++finished === steps) allDone();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(dispatch);
    }
  };
  const cpu = process.cpuUsage();
  const elu = performance.eventLoopUtilization();
  const start = performance.now();
  dispatch();
  await done;
  const ms = performance.now() - start;
  const used = process.cpuUsage(cpu);
  const busy = performance.eventLoopUtilization(elu);
  await pool.close();
  return {
    perSecond: (steps / ms) * 1_000,
    cpuUs: (used.user + used.system) / steps,
    mainUs: (busy.active * 1_000) / steps,
  };
}

console.log(
  `thread pool alone: ${num(steps)} no-op steps, concurrency ${concurrency}, ${threads} threads, ${dist}`,
);
for (let r = 1; r <= rounds; r++) {
  const m = await round();
  console.log(
    `  round ${r}: ${num(Math.round(m.perSecond))} steps/s, process CPU ${m.cpuUs.toFixed(2)} µs/step, main thread busy ${m.mainUs.toFixed(2)} µs/step`,
  );
}
