/**
 * The worker-thread side: imports machine modules by itself, runs a batch of steps
 * concurrently and streams their results back on the batch's port.
 */
import { BroadcastChannel, threadId } from 'node:worker_threads';
import { workerData } from 'piscina';
import { type AnyMachine, isMachineDefinition, machineKey } from '../runtime/machine.js';
import { abortRunningSteps, executeStep, fallbackResult, onErrorLimitMs, toFailure } from './execute-step.js';
import type { PoolWorkerData, PortMessage, StepItem, StepResult, StepTask } from './protocol.js';
import { ensureTypeScriptLoader, isTypeScriptModule } from './typescript-loader.js';

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

export default async function runBatch(task: StepTask): Promise<number> {
  const { items, port, running } = task;
  const post = (message: PortMessage): void => port.postMessage(message);
  post({ type: 'started', threadId });
  const defs = await Promise.all(
    items.map((item) => definitionFor(item).catch((error: unknown) => toFailure(error))),
  );

  const timeouts: Array<readonly [string, number]> = [];
  defs.forEach((def, i) => {
    if (!('steps' in def)) return;
    // A step runs under its timeout; a failure's onError round under onError's limit.
    const limit = items[i]!.failure ? onErrorLimitMs(def) : def.stepTimeoutMs;
    if (limit !== null) timeouts.push([items[i]!.id, limit]);
  });
  if (timeouts.length > 0) post({ type: 'deadlines', timeouts });

  let buffer: StepResult[] = [];
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (buffer.length === 0) return;
    const results = buffer;
    buffer = [];
    post({ type: 'results', results });
  };
  await Promise.all(
    items.map(async (item, i) => {
      const def = defs[i]!;
      const mark = (on: boolean): void => void Atomics.store(running, 0, on ? i + 1 : 0);
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
  flush();
  return items.length;
}
