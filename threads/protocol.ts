/**
 * The message protocol between a node's main thread and its worker threads.
 *
 * The main thread sends a batch of claimed steps as one piscina task together with a fresh
 * `MessagePort`. The worker runs the batch's steps concurrently and posts their results on
 * that port as they finish, coalescing results that finish in the same turn of its event
 * loop into one message. States and results cross as JSON text, so the main thread never
 * parses or re-serialises them.
 */
import type { MessagePort } from 'node:worker_threads';
import type { StepRequest, StepResult } from '../runtime/executor.js';
import type { StepFailure } from '../runtime/machine.js';

export type { StepResult };

export interface StepItem extends StepRequest {
  /** Module URL the worker imports the machine from. */
  readonly module: string;
  /** When set, the step is not run: its `onError` hook decides the outcome of this failure. */
  readonly failure?: StepFailure;
}

export interface StepTask {
  readonly items: readonly StepItem[];
  readonly port: MessagePort;
  /**
   * Shared with the main thread: 1 + the index of the item whose user code (step or
   * `onError`) is running synchronously right now, else 0. When a thread stops responding,
   * this names the step that blocks it.
   */
  readonly running: Int32Array;
}

/**
 * `started` comes first, before the worker loads anything for the batch: which thread runs
 * it. `deadlines` follows for the steps that have a timeout, so the main thread can
 * terminate a thread that stops responding past one. `results` stream as steps finish.
 */
export type PortMessage =
  | { readonly type: 'started'; readonly threadId: number }
  | { readonly type: 'deadlines'; readonly timeouts: ReadonlyArray<readonly [string, number]> }
  | { readonly type: 'results'; readonly results: readonly StepResult[] };

/** What every worker thread of a pool is started with. */
export interface PoolWorkerData {
  /** URL of the worker module that `bootstrap.mjs` hands over to. */
  readonly entry: string;
  /** Machine modules to import while the thread starts. */
  readonly preload: readonly string[];
  /** `BroadcastChannel` name on which the pool asks its threads to abort running steps. */
  readonly abortChannel: string;
}
