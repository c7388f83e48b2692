/**
 * The seam between the engine loop (runtime) and where steps run (threads). The loop hands
 * claimed steps to an executor and receives one `StepResult` per step, in any order.
 */
import type { ErrorDetail } from './errors.js';

/** A claimed step, as the loop hands it to an executor. */
export interface StepRequest {
  readonly id: string;
  readonly machine: string;
  readonly version: number;
  readonly step: string;
  /** The row's state as JSON text. */
  readonly state: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly correlationKey: string | null;
}

/**
 * A step's outcome, validated and serialised (states and results as JSON text).
 * `release` gives the claim back without charging an attempt (drain, a co-runner's crash).
 * `error` is the failure that led to this outcome (its message, bounded), kept in the row's
 * error history with its `errorDetail` (name, code, bounded stack).
 */
export type StepResult = (
  | { readonly kind: 'next'; readonly step: string; readonly state: string; readonly delayMs: number }
  | { readonly kind: 'retry'; readonly state: string; readonly delayMs: number }
  | { readonly kind: 'done'; readonly result: string }
  | { readonly kind: 'stop'; readonly reason: string }
  | { readonly kind: 'release' }
) & { readonly id: string; readonly error?: string; readonly errorDetail?: ErrorDetail };

export interface StepExecutor {
  /** Runs the steps; `onResult` is called exactly once per request. */
  execute(requests: readonly StepRequest[], onResult: (result: StepResult) => void): void;
  /** Number of steps currently running. */
  readonly running: number;
  close(): Promise<void>;
}
