/**
 * The seam between the engine loop (runtime) and where steps run (threads). The loop hands
 * claimed steps to an executor and receives one `StepResult` per step, in any order.
 */
import type { ErrorDetail } from './errors.js';
import type { InsertRow } from './sql/instances.js';

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
  /** The inbox as JSON text (`[{ id, name, payload, insertedAt }]`), or null when it is empty. */
  readonly inbox: string | null;
  /** The names the row awaited when a signal or its deadline woke it (null otherwise). */
  readonly awaiting: readonly string[] | null;
  readonly timedOut: boolean;
  /** The children of the row's latest spawn as JSON text, when it was joined (else null). */
  readonly children: string | null;
}

/** A signal a step sends (`ctx.signal`), committed with its outcome. */
export interface SignalRequest {
  /** The target's id, or null when it is addressed by `targetKey`. */
  readonly targetId: string | null;
  readonly targetKey: string | null;
  readonly name: string;
  /** The payload as JSON text. */
  readonly payload: string;
  readonly dedupKey: string | null;
}

/** What a step recorded with `ctx.enqueue` and `ctx.signal`: committed with its outcome, or not at all. */
export interface StepEffects {
  readonly inserts: readonly InsertRow[];
  readonly signals: readonly SignalRequest[];
}

/**
 * A step's outcome, validated and serialised (states and results as JSON text).
 * `release` gives the claim back without charging an attempt (drain, a co-runner's crash).
 * `error` is the failure that led to this outcome (its message, bounded), kept in the row's
 * error history with its `errorDetail` (name, code, bounded stack).
 */
export type StepResult = (
  | {
      readonly kind: 'next';
      readonly step: string;
      readonly state: string;
      readonly delayMs: number;
      /** Signal ids the step was handed in `ctx.awaited`: consumed with this outcome (none if absent). */
      readonly consumed?: readonly string[];
      /** A new concurrency key, or null to release it; absent keeps the row's key. */
      readonly concurrencyKey?: string | null;
      /** The next step's rate limit: its name, partition (or null) and weight. */
      readonly rate?: { readonly limit: string; readonly partition: string | null; readonly weight: number };
      /** Run-ahead asked for (the machine's `inline`, or the outcome's): see `continuationOf`. */
      readonly inline?: boolean;
    }
  | { readonly kind: 'retry'; readonly state: string; readonly delayMs: number }
  | {
      readonly kind: 'await';
      readonly step: string;
      readonly state: string;
      readonly names: readonly string[];
      /** Deadline from now, or null for none. */
      readonly timeoutMs: number | null;
      /** Signal ids a re-await already saw: they do not wake it again. */
      readonly seen: readonly string[];
    }
  | {
      readonly kind: 'spawn';
      readonly step: string;
      readonly state: string;
      readonly children: readonly InsertRow[];
      readonly consumed?: readonly string[];
    }
  | { readonly kind: 'done'; readonly result: string }
  | { readonly kind: 'stop'; readonly reason: string }
  | { readonly kind: 'release' }
) & {
  readonly id: string;
  readonly error?: string;
  readonly errorDetail?: ErrorDetail;
  readonly effects?: StepEffects;
};

export interface StepExecutor {
  /** Runs the steps; `onResult` is called exactly once per request. */
  execute(requests: readonly StepRequest[], onResult: (result: StepResult) => void): void;
  /** Number of steps currently running. */
  readonly running: number;
  close(): Promise<void>;
}
