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

interface TaskState {
  readonly items: readonly StepItem[];
  /** See `StepTask.running`. */
  readonly running: Int32Array;
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
  /** Threads the watchdog terminated, with the steps blamed and why. */
  readonly #terminated = new Map<number, Map<string, string>>();
  /** Batches running on each thread, as announced by their `started` message. */
  readonly #tasks = new Map<number, Set<TaskState>>();
  #lastKillAt = 0;
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
      let module: string | undefined;
      let message = `machine ${request.machine} version ${request.version} is not registered on this node`;
      try {
        module = this.#options.registry.moduleOf(request.machine, request.version);
      } catch (error) {
        message = `resolve(${request.machine}, ${request.version}) failed: ${errorMessage(error)}`;
      }
      if (module === undefined) {
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
    const task: TaskState = { items, running: new Int32Array(new SharedArrayBuffer(4)) };
    const { port1, port2 } = new MessageChannel();
    let threadId: number | undefined;
    let watchdog: NodeJS.Timeout | undefined;
    let settled = false;

    const arm = (timeouts: ReadonlyArray<readonly [string, number]>): void => {
      const start = Date.now();
      const deadlines = timeouts.map(([id, ms]) => ({ id, ms, at: start + ms + this.#graceMs }));
      watchdog = setInterval(
        () => {
          const now = Date.now();
          const late = deadlines.filter((d) => pending.has(d.id) && d.at <= now);
          if (late.length === 0 || threadId === undefined) return;
          clearInterval(watchdog);
          this.#terminate(threadId, late);
        },
        Math.max(50, Math.min(this.#graceMs, 1_000)),
      );
      watchdog.unref();
    };
    const receive = (message: PortMessage): void => {
      switch (message.type) {
        case 'results':
          for (const result of message.results) if (pending.delete(result.id)) deliver(result);
          return;
        case 'started':
          threadId = message.threadId;
          this.#tasksOn(threadId).add(task);
          return;
        case 'deadlines':
          if (!settled) arm(message.timeouts);
          return;
      }
    };
    port1.on('message', receive);

    let crash: unknown;
    try {
      const message: StepTask = { items, port: port2, running: task.running };
      await this.#piscina.run(message, { transferList: [port2] });
    } catch (error) {
      crash = error;
    } finally {
      settled = true;
      clearInterval(watchdog);
      for (let m = receiveMessageOnPort(port1); m; m = receiveMessageOnPort(port1))
        receive(m.message as PortMessage);
      port1.close();
      if (threadId !== undefined) this.#tasks.get(threadId)?.delete(task);
    }
    if (pending.size === 0) return;

    // Killed by the watchdog: the blamed steps get a timeout failure, every other step on
    // that thread is released. A batch that never started ran no step: released as well
    // when the watchdog just killed a thread (it was queued behind the blocked one).
    const blamed = threadId === undefined ? undefined : this.#terminated.get(threadId);
    const queuedBehindKill = !isRetry && threadId === undefined && Date.now() - this.#lastKillAt < 60_000;
    const failed: StepItem[] = [];
    for (const item of pending.values()) {
      const blame = blamed?.get(item.id);
      // A retry round carries a failure already: it is never released, or it would be lost.
      if (!isRetry && ((blamed && blame === undefined) || queuedBehindKill)) {
        deliver({ id: item.id, kind: 'release' });
        continue;
      }
      const failure: StepFailure =
        blame !== undefined
          ? { kind: 'timeout', name: 'StepTimeout', message: blame }
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

  #tasksOn(threadId: number): Set<TaskState> {
    let tasks = this.#tasks.get(threadId);
    if (!tasks) {
      tasks = new Set();
      this.#tasks.set(threadId, tasks);
    }
    return tasks;
  }

  /**
   * Terminates a thread that let a step's deadline pass. The blame goes to the step whose
   * code holds the thread right now (marked in shared memory by the worker); when no step
   * is marked (it blocks in a continuation), to the steps whose deadlines passed.
   */
  #terminate(threadId: number, late: ReadonlyArray<{ id: string; ms: number }>): void {
    const thread = this.#piscina.threads.find((t) => t.threadId === threadId);
    if (!thread) return;
    const blame = this.#terminated.get(threadId) ?? new Map<string, string>();
    for (const task of this.#tasks.get(threadId) ?? []) {
      const holder = task.items[Atomics.load(task.running, 0) - 1];
      if (holder)
        blame.set(holder.id, `step blocked its thread past a deadline, so the thread was terminated`);
    }
    if (blame.size === 0) {
      for (const d of late) {
        blame.set(d.id, `step timed out after ${d.ms}ms and blocked its thread, which was terminated`);
      }
    }
    this.#terminated.set(threadId, blame);
    this.#lastKillAt = Date.now();
    // Batches on that thread settle within moments of its exit; then forget it.
    setTimeout(() => this.#terminated.delete(threadId), 60_000).unref();
    void thread.terminate();
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
