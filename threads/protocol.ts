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
}

/**
 * `started` announces which thread runs a batch and the deadlines of its steps that have a
 * timeout, so the main thread can terminate a thread whose step blocks past its deadline,
 * and can tell the other batches on a thread it terminated from victims of a crash.
 */
export type PortMessage =
  | {
      readonly type: 'started';
      readonly threadId: number;
      readonly timeouts: ReadonlyArray<readonly [string, number]>;
    }
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
