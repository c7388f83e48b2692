/**
 * Outcomes: what a step returns. A discriminated union with one constructor per kind; the
 * engine applies them with an exhaustive switch. Step names are type parameters, so an
 * outcome naming a step its machine does not have is a compile error (and is checked again
 * at run time by the worker).
 *
 * | kind  | row afterwards                                                              |
 * |-------|-----------------------------------------------------------------------------|
 * | next  | `runnable` at `step`, `attempt = 0`, eligible after `delay` (run-ahead: still |
 * |       | `executing` here, its next step started on the same claim once committed)  |
 * | retry | `runnable` at the same step, `attempt + 1`, after `delay`                   |
 * | await | `awaiting_signal` at `step` until one of `names` arrives or the timeout     |
 * | spawn | `awaiting_children` at `step`, its children inserted, until they all end   |
 * | done  | `done`, `result` recorded                                                   |
 * | stop  | `failed`, `reason` recorded as the error                                    |
 *
 * Signals: a progressing outcome (`next`, `spawn`) consumes the signals its step was handed
 * in `ctx.awaited`; `retry` and `await` consume nothing; `done` and `stop` clear the inbox.
 */
import type { Duration } from './duration.js';
import type { InsertOptions, RateLimitRef } from './insert-options.js';
import type { AnyMachine } from './machine.js';
import type { Mutable } from './mutable.js';

export const OUTCOME_BRAND = '@@gen-durable/outcome';

interface Branded {
  readonly [OUTCOME_BRAND]: true;
}

export interface NextOptions {
  /** Run the next step no earlier than this from now. */
  readonly delay?: Duration;
  /** A new concurrency key from the next step on, or `null` to release the instance's key. */
  readonly concurrencyKey?: string | null;
  /**
   * The next step takes tokens of this rate limit before it runs (`'name'` or `['name',
   * partition]`); kept across its retries. Without it the next step is not limited.
   */
  readonly rateLimit?: RateLimitRef;
  /** Tokens the next step takes (default 1; needs `rateLimit`). */
  readonly weight?: number;
  /**
   * Run the next step ahead on this node, on the claim already held, once this outcome is
   * committed (run-ahead); overrides the machine's `inline`. A next with a delay or a rate
   * limit, or the engine stopping, goes back to the queue instead.
   */
  readonly inline?: boolean;
}

export interface NextOutcome<K extends string = string, S = unknown> extends Branded {
  readonly kind: 'next';
  readonly step: K;
  readonly state: S;
  readonly delay?: Duration;
  readonly concurrencyKey?: string | null;
  readonly rateLimit?: RateLimitRef;
  readonly weight?: number;
  readonly inline?: boolean;
}

export interface RetryOutcome<S = unknown> extends Branded {
  readonly kind: 'retry';
  readonly state: S;
  readonly delay: Duration;
}

/** `R` is the result's static type (what `done(result)` was given, `undefined` as `null`). */
export interface DoneOutcome<R = unknown> extends Branded {
  readonly kind: 'done';
  readonly result: R;
}

export interface StopOutcome extends Branded {
  readonly kind: 'stop';
  readonly reason: string;
}

export interface AwaitOptions {
  /** Wake at this deadline anyway (`ctx.timedOut`); none by default. */
  readonly timeout?: Duration;
}

export interface AwaitOutcome<K extends string = string, S = unknown> extends Branded {
  readonly kind: 'await';
  readonly names: readonly string[];
  readonly step: K;
  readonly state: S;
  readonly timeout?: Duration;
}

/** A child of `spawn`: any machine or job, with its own insert options (no `tx`). */
export type ChildSpec<M extends AnyMachine = AnyMachine> = Omit<InsertOptions<M>, 'tx'> & {
  readonly machine: M;
};

export interface SpawnOutcome<K extends string = string, S = unknown> extends Branded {
  readonly kind: 'spawn';
  readonly step: K;
  readonly children: readonly ChildSpec[];
  readonly state: S;
}

export type Outcome<K extends string = string, S = unknown> =
  NextOutcome<K, S> | RetryOutcome<S> | AwaitOutcome<K, S> | SpawnOutcome<K, S> | DoneOutcome | StopOutcome;

export type OutcomeKind = Outcome['kind'];

/** Go to `step` with `state` (attempt resets to 0). */
export function next<const K extends string, S>(
  step: K,
  state: S,
  opts: NextOptions = {},
): NextOutcome<K, S> {
  // Options set one by one: conditional spreads cost V8 microseconds per call, and every
  // step of a machine calls this.
  const outcome: Mutable<NextOutcome<K, S>> = {
    [OUTCOME_BRAND]: true,
    kind: 'next',
    step,
    state,
  };
  if (opts.delay !== undefined) outcome.delay = opts.delay;
  if (opts.concurrencyKey !== undefined) outcome.concurrencyKey = opts.concurrencyKey;
  if (opts.rateLimit !== undefined) outcome.rateLimit = opts.rateLimit;
  if (opts.weight !== undefined) outcome.weight = opts.weight;
  if (opts.inline !== undefined) outcome.inline = opts.inline;
  return outcome;
}

/** Run the same step again after `delay` with `attempt + 1` (the poll/backoff primitive). */
export function retry<S>(state: S, delay: Duration = 0): RetryOutcome<S> {
  return { [OUTCOME_BRAND]: true, kind: 'retry', state, delay };
}

/**
 * Park until a signal named in `names` arrives (one already in the inbox counts), then run
 * `step` with `ctx.awaited` = the matching signals present; with `timeout`, wake at the
 * deadline anyway (`ctx.timedOut`). Re-awaiting sleeps until a signal the step has not seen.
 */
export function awaitSignals<const K extends string, S>(
  names: readonly string[],
  step: K,
  state: S,
  opts: AwaitOptions = {},
): AwaitOutcome<K, S> {
  const outcome: AwaitOutcome<K, S> = { [OUTCOME_BRAND]: true, kind: 'await', names, step, state };
  return opts.timeout === undefined ? outcome : { ...outcome, timeout: opts.timeout };
}

/**
 * Insert `children` and park until every one of them has ended (`done`, `failed` or
 * `cancelled`), then run `step` with `ctx.children`. No children: `step` runs at once.
 */
export function spawn<const K extends string, S>(
  step: K,
  children: readonly ChildSpec[],
  state: S,
): SpawnOutcome<K, S> {
  return { [OUTCOME_BRAND]: true, kind: 'spawn', step, children, state };
}

/** Finish as `done`, recording `result` (`null` when none is given). */
export function done<R = null>(result?: R): DoneOutcome<R extends undefined ? null : R> {
  return { [OUTCOME_BRAND]: true, kind: 'done', result: (result ?? null) as R extends undefined ? null : R };
}

/** Finish as `failed` at once (no retry), recording `reason`. */
export function stop(reason: string): StopOutcome {
  return { [OUTCOME_BRAND]: true, kind: 'stop', reason };
}

export function isOutcome(value: unknown): value is Outcome {
  return typeof value === 'object' && value !== null && (value as Partial<Branded>)[OUTCOME_BRAND] === true;
}

export function assertNever(value: never, what = 'value'): never {
  throw new Error(`unexpected ${what}: ${JSON.stringify(value)}`);
}
