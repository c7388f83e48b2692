/**
 * The message protocol between a node's main thread and its worker threads.
 *
 * Each worker thread, as it starts, creates the port it posts to the main thread on and
 * sends the other end through piscina's worker channel (`ThreadPortMessage`). The main
 * thread sends a batch of claimed steps as one piscina task, naming a block of shared memory
 * (`TaskControl`). The worker runs the batch's steps concurrently. Results of steps that
 * finish while others of the batch still run are posted on its port (those of one turn of
 * its event loop in one message, naming the task); the rest come back as the task's own
 * reply, so a batch of quick steps costs the task and its reply and no message more. States
 * and results cross as JSON text, so the main thread never parses or re-serialises them, and
 * batches and results cross as a few strings and typed arrays, not one object per step
 * (`wire.ts`).
 */
import type { MessagePort } from 'node:worker_threads';
import type { StepRequest, StepResult } from '../runtime/executor.js';
import type { StepFailure } from '../runtime/machine.js';
import type { WireItems, WireResults } from './wire.js';

export type { StepResult };

export interface StepItem extends StepRequest {
  /** Module URL the worker imports the machine from. */
  readonly module: string;
  /** When set, the step is not run: its `onError` hook decides the outcome of this failure. */
  readonly failure?: StepFailure;
}

export interface StepTask {
  /** Names the task in the messages posted for it. */
  readonly task: number;
  /** The batch's steps (`encodeItems`). */
  readonly items: WireItems;
  /** The task's block in the pool's `controls` (`PoolWorkerData`), or -1: it is in `control`. */
  readonly slot: number;
  /** A block of its own (`CONTROL_BYTES`), when the pool's were all taken. */
  readonly control?: SharedArrayBuffer;
  /**
   * The main thread knows every item's step timeout (their machines are registered there):
   * the worker posts no `deadlines`.
   */
  readonly deadlinesKnown: boolean;
}

/**
 * What the worker tells the main thread of a batch without a message, through shared memory:
 * - `flags[RUNNING]`: 1 + the index of the item whose user code (step or `onError`) is
 *   running synchronously right now, else 0. When a thread stops responding, this names
 *   the step that blocks it;
 * - `flags[THREAD]`: the thread running the batch, set before the worker loads anything for
 *   it (0: not started);
 * - `startedAt[0]`: when its steps started (`Date.now()`, 0 before), which their deadlines
 *   count from.
 */
export interface TaskControl {
  readonly flags: Int32Array;
  readonly startedAt: BigInt64Array;
}

export const CONTROL_BYTES = 16;
export const RUNNING = 0;
export const THREAD = 1;

/** The control block at `slot` of `buffer` (slot 0 of a block of its own). */
export function taskControl(buffer: SharedArrayBuffer, slot = 0): TaskControl {
  const offset = slot * CONTROL_BYTES;
  return { flags: new Int32Array(buffer, offset, 2), startedAt: new BigInt64Array(buffer, offset + 8, 1) };
}

/**
 * `deadlines`, for steps that have a timeout the main thread does not know (machines it
 * resolves by name only), so it can terminate a thread that stops responding past one.
 * `results` stream as steps finish while others of the batch still run.
 */
export type PortMessage =
  | {
      readonly type: 'deadlines';
      readonly task: number;
      readonly timeouts: ReadonlyArray<readonly [string, number]>;
    }
  | { readonly type: 'results'; readonly task: number; readonly results: WireResults };

/**
 * A task's reply: the results not posted while it ran, and how long the worker took over the
 * batch (from starting its steps to the last one's end), which the pool uses to decide how
 * many threads its next batches are worth (`taskCount`).
 */
export interface TaskReply {
  /** The results (`encodeResults`). */
  readonly results: WireResults;
  readonly elapsedUs: number;
}

export const THREAD_PORT = 'gen-durable:thread-port';

/** A worker's first message (on piscina's channel): the port it posts on. */
export interface ThreadPortMessage {
  readonly type: typeof THREAD_PORT;
  readonly threadId: number;
  readonly port: MessagePort;
}

export const THREAD_READY = 'gen-durable:thread-ready';

/** A worker's message (on piscina's channel) once it imported the registered machine modules. */
export interface ThreadReadyMessage {
  readonly type: typeof THREAD_READY;
  readonly threadId: number;
}

/** A message a worker posted on piscina's channel (`ThreadPortMessage`, `ThreadReadyMessage`) of `type`. */
export function isThreadMessage<T extends { readonly type: string }>(
  message: unknown,
  type: T['type'],
): message is T {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

/** What every worker thread of a pool is started with. */
export interface PoolWorkerData {
  /** URL of the worker module that `bootstrap.mjs` hands over to. */
  readonly entry: string;
  /** Machine modules to import while the thread starts. */
  readonly preload: readonly string[];
  /** `BroadcastChannel` name on which the pool asks its threads to abort running steps. */
  readonly abortChannel: string;
  /** The pool's task control blocks (`TaskControl`), shared by all its threads. */
  readonly controls: SharedArrayBuffer;
}
