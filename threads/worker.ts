/**
 * The worker-thread side: imports machine modules by itself, runs a batch of steps
 * concurrently and streams their results back on the batch's port.
 */
import { BroadcastChannel, MessageChannel, parentPort, threadId } from 'node:worker_threads';
import { workerData } from 'piscina';
import { type AnyMachine, isMachineDefinition, machineKey } from '../runtime/machine.js';
import { abortRunningSteps, executeStep, fallbackResult, onErrorLimitMs, toFailure } from './execute-step.js';
import {
  type PoolWorkerData,
  type PortMessage,
  RUNNING,
  type StepItem,
  type StepResult,
  type StepTask,
  type TaskReply,
  THREAD,
  THREAD_PORT,
  type ThreadPortMessage,
  THREAD_READY,
  type ThreadReadyMessage,
  taskControl,
} from './protocol.js';
import { ensureTypeScriptLoader, isTypeScriptModule } from './typescript-loader.js';
import { decodeItems, encodeResults } from './wire.js';

const modules = new Map<string, Promise<Map<string, AnyMachine>>>();

async function loadModule(url: string): Promise<Map<string, AnyMachine>> {
  if (isTypeScriptModule(url)) await ensureTypeScriptLoader();
  const exports = (await import(url)) as Record<string, unknown>;
  const found = new Map<string, AnyMachine>();
  for (const value of Object.values(exports)) {
    if (isMachineDefinition(value)) found.set(machineKey(value.name, value.version), value);
  }
  return found;
}

function moduleAt(url: string): Promise<Map<string, AnyMachine>> {
  let loading = modules.get(url);
  if (!loading) {
    loading = loadModule(url);
    modules.set(url, loading);
    loading.catch(() => modules.delete(url));
  }
  return loading;
}

async function definitionFor(item: StepItem): Promise<AnyMachine> {
  const def = (await moduleAt(item.module)).get(machineKey(item.machine, item.version));
  if (!def)
    throw new Error(`module ${item.module} exports no machine ${item.machine} version ${item.version}`);
  return def;
}

const data = workerData as PoolWorkerData;

// The port this thread posts results on; the other end goes to the main thread first thing.
const { port1: mainEnd, port2: toMain } = new MessageChannel();
const hello: ThreadPortMessage = { type: THREAD_PORT, threadId, port: mainEnd };
parentPort!.postMessage(hello, [mainEnd]);
const post = (message: PortMessage): void => toMain.postMessage(message);

// A machine module that starts a node at its top level without awaiting it leaves a
// rejected join behind here (see `Cluster.join`): the thread carries on running its steps.
process.on('unhandledRejection', (reason: unknown) => {
  if ((reason as { code?: unknown } | null)?.code === 'join_in_worker') return;
  throw reason;
});

// The node's forced shutdown fires the abort signal of every running step.
const aborts = new BroadcastChannel(data.abortChannel);
aborts.onmessage = () => abortRunningSteps('the node is shutting down');
aborts.unref();

// Import the registered machine modules while the thread starts, not on its first batch. A
// module that fails here fails again, with its error recorded, when a step needs it.
await Promise.all(data.preload.map((url) => moduleAt(url).catch(() => undefined)));
const ready: ThreadReadyMessage = { type: THREAD_READY, threadId };
parentPort!.postMessage(ready);

/** Runs a batch; returns the results not posted on its port while it ran, and how long it took. */
export default async function runBatch(task: StepTask): Promise<TaskReply> {
  const { deadlinesKnown } = task;
  const items = decodeItems(task.items);
  const { flags, startedAt } = task.control
    ? taskControl(task.control)
    : taskControl(data.controls, task.slot);
  Atomics.store(flags, THREAD, threadId);
  const defs = await Promise.all(
    items.map((item) => definitionFor(item).catch((error: unknown) => toFailure(error))),
  );

  if (!deadlinesKnown) {
    const timeouts: Array<readonly [string, number]> = [];
    defs.forEach((def, i) => {
      if (!('steps' in def)) return;
      // A step runs under its timeout; a failure's onError round under onError's limit.
      const limit = items[i]!.failure ? onErrorLimitMs(def) : def.stepTimeoutMs;
      if (limit !== null) timeouts.push([items[i]!.id, limit]);
    });
    if (timeouts.length > 0) post({ type: 'deadlines', task: task.task, timeouts });
  }
  Atomics.store(startedAt, 0, BigInt(Date.now()));
  const began = performance.now();

  let buffer: StepResult[] = [];
  let scheduled = false;
  let finished = false;
  const flush = (): void => {
    scheduled = false;
    if (finished || buffer.length === 0) return;
    const results = buffer;
    buffer = [];
    post({ type: 'results', task: task.task, results: encodeResults(results) });
  };
  await Promise.all(
    items.map(async (item, i) => {
      const def = defs[i]!;
      // The block is another task's once this one replied: a continuation of a step that
      // outlives its batch marks nothing.
      const mark = (on: boolean): void => {
        if (!finished) Atomics.store(flags, RUNNING, on ? i + 1 : 0);
      };
      let result: StepResult;
      try {
        result = 'steps' in def ? await executeStep(def, item, mark) : fallbackResult(item, def);
      } catch (error) {
        result = fallbackResult(item, toFailure(error));
      }
      buffer.push(result);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    }),
  );
  // What finished since the last post goes back with the task's reply.
  finished = true;
  return { results: encodeResults(buffer), elapsedUs: (performance.now() - began) * 1_000 };
}
