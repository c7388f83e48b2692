/**
 * Outcomes: what a step returns. A discriminated union with one constructor per kind; the
 * engine applies them with an exhaustive switch. Step names are type parameters, so an
 * outcome naming a step its machine does not have is a compile error (and is checked again
 * at run time by the worker).
 *
 * | kind  | row afterwards                                              |
 * |-------|-------------------------------------------------------------|
 * | next  | `runnable` at `step`, `attempt = 0`, eligible after `delay` |
 * | retry | `runnable` at the same step, `attempt + 1`, after `delay`   |
 * | done  | `done`, `result` recorded                                   |
 * | stop  | `failed`, `reason` recorded as the error                    |
 */
import type { Duration } from './duration.js';

export const OUTCOME_BRAND = '@@gen-durable/outcome';

interface Branded {
  readonly [OUTCOME_BRAND]: true;
}

export interface NextOptions {
  /** Run the next step no earlier than this from now. */
  readonly delay?: Duration;
}

export interface NextOutcome<K extends string = string, S = unknown> extends Branded {
  readonly kind: 'next';
  readonly step: K;
  readonly state: S;
  readonly delay?: Duration;
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

export type Outcome<K extends string = string, S = unknown> =
  NextOutcome<K, S> | RetryOutcome<S> | DoneOutcome | StopOutcome;

export type OutcomeKind = Outcome['kind'];

/** Go to `step` with `state` (attempt resets to 0). */
export function next<const K extends string, S>(
  step: K,
  state: S,
  opts: NextOptions = {},
): NextOutcome<K, S> {
  const outcome: NextOutcome<K, S> = { [OUTCOME_BRAND]: true, kind: 'next', step, state };
  return opts.delay === undefined ? outcome : { ...outcome, delay: opts.delay };
}

/** Run the same step again after `delay` with `attempt + 1` (the poll/backoff primitive). */
export function retry<S>(state: S, delay: Duration = 0): RetryOutcome<S> {
  return { [OUTCOME_BRAND]: true, kind: 'retry', state, delay };
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
