/**
 * A queue's thread pool on one node: a piscina pool of `threads` workers that runs batches
 * of claimed steps.
 *
 * A batch is split evenly over the threads; each part crosses the thread boundary as one
 * task with its own `MessagePort`, on which the worker streams results as steps finish.
 * When a task settles, the port is drained synchronously, so no result posted before a
 * thread died is lost. Steps left without a result are handled here:
 *
 * - the thread died (uncaught error, `process.exit`, out of memory): each such step is a
 *   failure, sent once more to a worker to run the machine's `onError`; if that dies too,
 *   the default policy applies on the stored state;
 * - a step blocked its thread past its timeout (plus `graceMs`): the watchdog terminates the
 *   thread; the late step gets a timeout failure, and every other step that was on that
 *   thread (in this batch or another) is released without charging an attempt.
 *
 * Piscina replaces dead threads by itself (`minThreads = maxThreads = threads`).
 */
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { BroadcastChannel, MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { errorMessage } from '../runtime/errors.js';
import type { StepExecutor, StepRequest, StepResult } from '../runtime/executor.js';
import type { StepFailure } from '../runtime/machine.js';
import type { MachineRegistry } from '../runtime/registry.js';
import { trackResource } from '../runtime/resources.js';
import { fallbackResult } from './execute-step.js';
import type { PoolWorkerData, PortMessage, StepItem, StepTask } from './protocol.js';

export interface QueuePoolOptions {
  readonly queue: string;
  readonly threads: number;
  /** Upper bound of steps in flight, which bounds the tasks sharing one thread. */
  readonly concurrency: number;
  readonly registry: MachineRegistry;
  /** How long past its timeout a step may block its thread before the thread is terminated. */
  readonly graceMs?: number;
  readonly onError?: (error: unknown) => void;
  /** Heap limit of each thread; a thread over it dies (and its steps count as errors). */
  readonly memoryLimitMb?: number;
}

const here = import.meta.url;
const workerEntry = new URL(here.endsWith('.ts') ? './worker.ts' : './worker.js', here).href;
const bootstrapFile = fileURLToPath(new URL('./bootstrap.mjs', here));

export class QueuePool implements StepExecutor {
  readonly #piscina: Piscina;
  readonly #options: QueuePoolOptions;
  readonly #graceMs: number;
  readonly #untrack: () => void;
  readonly #aborts: BroadcastChannel;
  /** Threads the watchdog terminated, with the ids of the steps that overran on them. */
  readonly #terminated = new Map<number, Map<string, number>>();
  #running = 0;

  constructor(options: QueuePoolOptions) {
    this.#options = options;
    this.#graceMs = options.graceMs ?? 1_000;
    const abortChannel = `gen-durable:abort:${randomUUID()}`;
    this.#aborts = new BroadcastChannel(abortChannel);
    const workerData: PoolWorkerData = {
      entry: workerEntry,
      preload: [...new Set(options.registry.definitions.map((d) => d.module))],
      abortChannel,
    };
    this.#piscina = new Piscina({
      filename: bootstrapFile,
      minThreads: options.threads,
      maxThreads: options.threads,
      idleTimeout: Number.POSITIVE_INFINITY,
      concurrentTasksPerWorker: Math.max(1, options.concurrency),
      atomics: 'disabled',
      recordTiming: false,
      workerData,
      ...(options.memoryLimitMb ? { resourceLimits: { maxOldGenerationSizeMb: options.memoryLimitMb } } : {}),
    });
    this.#piscina.on('error', (error: unknown) => options.onError?.(error));
    this.#untrack = trackResource(this, 'thread-pool', options.queue);
  }

  get running(): number {
    return this.#running;
  }

  get threadCount(): number {
    return this.#piscina.threads.length;
  }

  execute(requests: readonly StepRequest[], onResult: (result: StepResult) => void): void {
    this.#running += requests.length;
    const deliver = (result: StepResult): void => {
      this.#running--;
      onResult(result);
    };
    const items: StepItem[] = [];
    for (const request of requests) {
      const module = this.#options.registry.moduleOf(request.machine, request.version);
      if (module === undefined) {
        const message = `machine ${request.machine} version ${request.version} is not registered on this node`;
        deliver(
          fallbackResult({ ...request, module: '' }, { kind: 'thrown', name: 'UnknownMachine', message }),
        );
      } else {
        items.push({ ...request, module });
      }
    }
    const parts = Math.min(this.#options.threads, items.length);
    const size = Math.ceil(items.length / Math.max(1, parts));
    for (let i = 0; i < items.length; i += size) {
      void this.#runTask(items.slice(i, i + size), deliver, false);
    }
  }

  async #runTask(
    items: readonly StepItem[],
    deliver: (result: StepResult) => void,
    isRetry: boolean,
  ): Promise<void> {
    const pending = new Map(items.map((item) => [item.id, item]));
    const { port1, port2 } = new MessageChannel();
    let threadId: number | undefined;
    let watchdog: NodeJS.Timeout | undefined;

    const receive = (message: PortMessage): void => {
      if (message.type === 'results') {
        for (const result of message.results) if (pending.delete(result.id)) deliver(result);
        return;
      }
      threadId = message.threadId;
      if (message.timeouts.length === 0) return;
      const started = Date.now();
      const deadlines = message.timeouts.map(([id, ms]) => [id, ms, started + ms + this.#graceMs] as const);
      watchdog = setInterval(
        () => {
          const now = Date.now();
          const late = deadlines.filter(([id, , at]) => pending.has(id) && at <= now);
          if (late.length === 0) return;
          clearInterval(watchdog);
          const thread = this.#piscina.threads.find((t) => t.threadId === threadId);
          if (!thread || threadId === undefined) return;
          const killed = threadId;
          this.#terminated.set(killed, new Map(late.map(([id, ms]) => [id, ms])));
          // Batches on that thread settle within moments of its exit; then forget it.
          setTimeout(() => this.#terminated.delete(killed), 60_000).unref();
          void thread.terminate();
        },
        Math.max(50, Math.min(this.#graceMs, 1_000)),
      );
      watchdog.unref();
    };
    port1.on('message', receive);

    let crash: unknown;
    try {
      const task: StepTask = { items, port: port2 };
      await this.#piscina.run(task, { transferList: [port2] });
    } catch (error) {
      crash = error;
    } finally {
      clearInterval(watchdog);
      for (let m = receiveMessageOnPort(port1); m; m = receiveMessageOnPort(port1))
        receive(m.message as PortMessage);
      port1.close();
    }
    if (pending.size === 0) return;

    // Steps that overran on a thread the watchdog terminated (this batch's, or another's).
    const overdue = threadId === undefined ? undefined : this.#terminated.get(threadId);
    const failed: StepItem[] = [];
    for (const item of pending.values()) {
      const lateMs = overdue?.get(item.id);
      if (overdue && lateMs === undefined) {
        deliver({ id: item.id, kind: 'release' });
        continue;
      }
      const failure: StepFailure =
        lateMs !== undefined
          ? {
              kind: 'timeout',
              name: 'StepTimeout',
              message: `step timed out after ${lateMs}ms and blocked its thread, which was terminated`,
            }
          : {
              kind: 'thread_exit',
              name: 'ThreadExit',
              message: `worker thread died: ${errorMessage(crash ?? 'no result')}`,
            };
      if (isRetry) deliver(fallbackResult(item, item.failure ?? failure));
      else failed.push({ ...item, failure });
    }
    if (failed.length > 0) await this.#runTask(failed, deliver, true);
  }

  /** Fires the abort signal of every step running in this pool (a forced shutdown). */
  abortRunning(): void {
    this.#aborts.postMessage('abort');
  }

  async close(): Promise<void> {
    this.#aborts.close();
    await this.#piscina.destroy();
    this.#untrack();
  }
}
