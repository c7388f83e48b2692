/**
 * A queue's thread pool on one node: a piscina pool of `threads` workers that runs batches
 * of claimed steps.
 *
 * A batch is split evenly over as many threads as it is worth (`taskCount`: one thread for a
 * batch of quick steps, all of them for slow ones, judged by how long recent batches took
 * their worker, `StepTimes`); each part crosses the thread boundary as one task. The
 * worker streams the results of steps that finish while others of the part still
 * run on its thread's port (`ThreadPorts`); the rest come back as the task's reply. When a
 * task settles, that port is drained synchronously, so no result posted before a thread
 * died is lost. Which thread runs a part, and which of its steps holds the thread, the
 * worker writes to shared memory (`ControlSlots`), not in messages. Steps left without a
 * result are handled here:
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
import { BroadcastChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { errorMessage } from '../runtime/errors.js';
import type { StepExecutor, StepRequest, StepResult } from '../runtime/executor.js';
import type { StepFailure } from '../runtime/machine.js';
import type { MachineRegistry } from '../runtime/registry.js';
import { trackResource } from '../runtime/resources.js';
import { fallbackResult, onErrorLimitMs } from './execute-step.js';
import { type ControlSlot, ControlSlots } from './control-slots.js';
import {
  type PoolWorkerData,
  type PortMessage,
  RUNNING,
  type StepItem,
  type StepTask,
  THREAD,
  THREAD_PORT,
  THREAD_READY,
  type TaskControl,
  type TaskReply,
  type ThreadPortMessage,
  type ThreadReadyMessage,
  isThreadMessage,
} from './protocol.js';
import { StepTimes, taskCount } from './step-times.js';
import { ThreadPorts } from './thread-ports.js';
import { decodeResults, encodeItems } from './wire.js';

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
  readonly control: TaskControl;
}

/** The thread a task runs on, once it started (see `TaskControl`). */
function threadOf(task: TaskState): number | undefined {
  return Atomics.load(task.control.flags, THREAD) || undefined;
}

/** A request as sent to its worker, field by field (a spread costs V8 microseconds per step). */
function itemOf(r: StepRequest, module: string): StepItem {
  return {
    id: r.id,
    machine: r.machine,
    version: r.version,
    step: r.step,
    state: r.state,
    attempt: r.attempt,
    maxAttempts: r.maxAttempts,
    correlationKey: r.correlationKey,
    inbox: r.inbox,
    awaiting: r.awaiting,
    timedOut: r.timedOut,
    children: r.children,
    module,
  };
}

/**
 * How long `ready` waits for threads at most: a thread that never gets through its start
 * (piscina replaces one that dies) does not keep the node from joining; its steps then wait
 * in piscina's queue for a thread, as they would have anyway.
 */
const READY_WAIT_MS = 10_000;

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
  /** Tasks sent and not settled, whichever thread runs them. */
  readonly #live = new Set<TaskState>();
  readonly #ports = new ThreadPorts();
  readonly #slots: ControlSlots;
  #tasks = 0;
  /** How long a step of each machine version took its worker of late. */
  readonly #stepTimes = new StepTimes();
  #lastKillAt = 0;
  #running = 0;
  /**
   * Resolves once every thread has started and imported the registered machine modules (or
   * a thread failed, or `READY_WAIT_MS` passed): the node claims nothing before, so rows are
   * not held here while threads start (~0.1–0.3 s of CPU each) and other nodes could run them.
   */
  readonly ready: Promise<void>;
  #markReady: () => void = () => undefined;

  constructor(options: QueuePoolOptions) {
    this.#options = options;
    this.#graceMs = options.graceMs ?? 1_000;
    const abortChannel = `gen-durable:abort:${randomUUID()}`;
    this.#aborts = new BroadcastChannel(abortChannel);
    // Tasks in flight: at most one per step, plus a few to spare.
    this.#slots = new ControlSlots(Math.max(1, options.concurrency) + options.threads);
    const workerData: PoolWorkerData = {
      entry: workerEntry,
      preload: [...new Set(options.registry.definitions.map((d) => d.module))],
      abortChannel,
      controls: this.#slots.buffer,
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
    this.ready = new Promise<void>((resolve) => (this.#markReady = resolve));
    const readyThreads = new Set<number>();
    setTimeout(() => this.#markReady(), READY_WAIT_MS).unref();
    this.#piscina.on('error', (error: unknown) => {
      this.#markReady();
      options.onError?.(error);
    });
    this.#piscina.on('message', (message: unknown) => {
      if (isThreadMessage<ThreadPortMessage>(message, THREAD_PORT)) this.#ports.attach(message);
      else if (isThreadMessage<ThreadReadyMessage>(message, THREAD_READY)) {
        readyThreads.add(message.threadId);
        if (readyThreads.size >= options.threads) this.#markReady();
      }
    });
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
        items.push(itemOf(request, module));
      }
    }
    const parts = taskCount(items.length, this.#options.threads, this.#stepTimes.meanOf(items));
    const size = Math.ceil(items.length / parts);
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
    const slot: ControlSlot = this.#slots.take();
    const task: TaskState = { items, control: slot.control };
    const taskNo = ++this.#tasks;
    let watchdog: NodeJS.Timeout | undefined;
    let settled = false;

    // Deadlines count from when the worker started the steps (in shared memory).
    const arm = (timeouts: ReadonlyArray<readonly [string, number]>): void => {
      if (timeouts.length === 0) return;
      watchdog = setInterval(
        () => {
          const start = Number(Atomics.load(task.control.startedAt, 0));
          const threadId = threadOf(task);
          if (start === 0 || threadId === undefined) return;
          const now = Date.now();
          const late = timeouts
            .filter(([id, ms]) => pending.has(id) && start + ms + this.#graceMs <= now)
            .map(([id, ms]) => ({ id, ms }));
          if (late.length === 0) return;
          clearInterval(watchdog);
          this.#terminate(threadId, late);
        },
        Math.max(50, Math.min(this.#graceMs, 1_000)),
      );
      watchdog.unref();
    };
    const settle = (result: StepResult): void => {
      if (pending.delete(result.id)) deliver(result);
    };
    const receive = (message: PortMessage): void => {
      switch (message.type) {
        case 'results':
          decodeResults(message.results, settle);
          return;
        case 'deadlines':
          if (!settled) arm(message.timeouts);
          return;
      }
    };
    this.#ports.listen(taskNo, receive);
    const known = this.#deadlinesOf(items);
    if (known) arm(known);
    this.#live.add(task);

    let crash: unknown;
    let replied: TaskReply | undefined;
    // Read before the slot is freed for another task.
    let ranOn: number | undefined;
    try {
      const message: StepTask = {
        task: taskNo,
        items: encodeItems(items),
        slot: slot.slot,
        ...(slot.own ? { control: slot.own } : {}),
        deadlinesKnown: known !== null,
      };
      replied = (await this.#piscina.run(message)) as TaskReply;
    } catch (error) {
      crash = error;
    } finally {
      settled = true;
      clearInterval(watchdog);
      ranOn = threadOf(task);
      if (ranOn !== undefined) await this.#ports.drain(ranOn);
      this.#ports.forget(taskNo);
      this.#live.delete(task);
      this.#slots.release(slot);
    }
    if (replied) {
      this.#stepTimes.learn(items, replied.elapsedUs / items.length);
      decodeResults(replied.results, settle);
    } else {
      // The thread died under the batch: how long these steps take is not known any more.
      this.#stepTimes.forget(items);
    }
    if (pending.size === 0) return;

    // Killed by the watchdog: the blamed steps get a timeout failure, every other step on
    // that thread is released. A batch that never started ran no step: released as well
    // when the watchdog just killed a thread (it was queued behind the blocked one).
    const blamed = ranOn === undefined ? undefined : this.#terminated.get(ranOn);
    const queuedBehindKill = !isRetry && ranOn === undefined && Date.now() - this.#lastKillAt < 60_000;
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

  /**
   * The step timeouts of `items` (`[id, ms]`, for those that have one), when the machines of
   * all of them are registered here; null when a machine is only resolved by name (its
   * worker tells its timeouts).
   */
  #deadlinesOf(items: readonly StepItem[]): Array<readonly [string, number]> | null {
    const timeouts: Array<readonly [string, number]> = [];
    for (const item of items) {
      const def = this.#options.registry.definitionOf(item.machine, item.version);
      if (!def) return null;
      // A step runs under its timeout; a failure's onError round under onError's limit.
      const limit = item.failure ? onErrorLimitMs(def) : def.stepTimeoutMs;
      if (limit !== null) timeouts.push([item.id, limit]);
    }
    return timeouts;
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
    for (const task of this.#live) {
      if (threadOf(task) !== threadId) continue;
      const holder = task.items[Atomics.load(task.control.flags, RUNNING) - 1];
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
    this.#markReady();
    this.#aborts.close();
    await this.#piscina.destroy();
    this.#ports.close();
    this.#untrack();
  }
}
