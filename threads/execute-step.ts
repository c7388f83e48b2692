/**
 * Runs one step of one instance and turns whatever happens into a validated `StepResult`.
 *
 * Every failure — a throw, a rejection, a step timeout, a return value that is not an
 * outcome, a next step the machine does not have, a state that fails the machine's schema or
 * is not JSON — goes to the machine's `onError` hook (default: capped exponential backoff
 * while attempts remain, then `stop`). If `onError` itself fails, the instance stops with a
 * message naming both problems, so no input can produce an endless crash loop.
 */
import { AsyncLocalStorage, createHook } from 'node:async_hooks';
import { defaultBackoff } from '../runtime/backoff.js';
import { parseDuration } from '../runtime/duration.js';
import {
  type ErrorDetail,
  MAX_ERROR_MESSAGE,
  boundText,
  describeZodIssues,
  errorDetail,
  errorMessage,
} from '../runtime/errors.js';
import { findNonJson, toJson } from '../runtime/json.js';
import type { AnyMachine, StepContext, StepFailure, StepFailureKind } from '../runtime/machine.js';
import { type Outcome, assertNever, isOutcome, retry, stop } from '../runtime/outcome.js';
import type { StepItem, StepResult } from './protocol.js';

/** A failure with a classification, thrown inside this module. */
class Failure extends Error {
  constructor(
    readonly kind: StepFailureKind,
    message: string,
  ) {
    super(message);
  }
}

export function toFailure(error: unknown): StepFailure {
  if (error instanceof Failure) return { kind: error.kind, name: 'StepFailure', message: error.message };
  const { name, code, stack } = errorDetail(error);
  return {
    kind: 'thrown',
    name: name ?? typeof error,
    message: boundText(errorMessage(error), MAX_ERROR_MESSAGE),
    ...(code === undefined ? {} : { code }),
    ...(stack === undefined ? {} : { stack }),
  };
}

/** What the error history keeps of a failure besides its message. */
function detailOf(failure: StepFailure): ErrorDetail {
  return {
    name: failure.name,
    ...(failure.code === undefined ? {} : { code: failure.code }),
    ...(failure.stack === undefined ? {} : { stack: failure.stack }),
  };
}

/** Controllers of the steps running on this thread, for `abortRunningSteps`. */
const running = new Set<AbortController>();

/** Fires the abort signal of every step running on this thread (forced shutdown). */
export function abortRunningSteps(reason: string): void {
  for (const controller of running) controller.abort(new Error(reason));
}

/** Told when user code starts (true) and stops (false) running synchronously. */
export type RunningMark = (running: boolean) => void;

const noMark: RunningMark = () => undefined;

/**
 * The mark of the step whose code is running, carried through its async context: every
 * callback and continuation of the step (after an `await`, in a timer) is marked while it
 * runs, so a step that blocks its thread after an `await` is named as the blocker too.
 * Async hooks cost every promise about 10% in a tight loop, so a thread turns this on only
 * once it runs a machine that has a step timeout (only those can get a thread terminated);
 * until then only the synchronous part of a step is marked.
 */
const stepContext = new AsyncLocalStorage<RunningMark>();
const continuations = createHook({
  before() {
    stepContext.getStore()?.(true);
  },
  after() {
    stepContext.getStore()?.(false);
  },
});
let tracking = false;

function trackContinuations(): void {
  if (tracking) return;
  tracking = true;
  continuations.enable();
}

/** Runs user code, marking every span in which it (or, when tracked, a continuation of it) runs. */
function marked<T>(mark: RunningMark, run: () => T): T {
  mark(true);
  try {
    return tracking ? stepContext.run(mark, run) : run();
  } finally {
    mark(false);
  }
}

export async function executeStep(
  def: AnyMachine,
  item: StepItem,
  mark: RunningMark = noMark,
): Promise<StepResult> {
  const controller = new AbortController();
  running.add(controller);
  try {
    return await executeWith(def, item, controller, mark);
  } finally {
    running.delete(controller);
  }
}

async function executeWith(
  def: AnyMachine,
  item: StepItem,
  controller: AbortController,
  mark: RunningMark,
): Promise<StepResult> {
  // Only an explicitly chosen timeout turns tracking on: the 15-minute default is a backstop
  // against promises that never settle, not worth 10% of every step's speed.
  if (def.stepTimeoutSet && def.stepTimeoutMs !== null) trackContinuations();
  const ctx: StepContext = {
    id: item.id,
    machine: item.machine,
    version: item.version,
    step: item.step,
    attempt: item.attempt,
    maxAttempts: item.maxAttempts,
    correlationKey: item.correlationKey,
    abortSignal: controller.signal,
  };
  const state: unknown = JSON.parse(item.state);
  let failure = item.failure;
  if (!failure) {
    try {
      const fn = def.steps[item.step];
      if (typeof fn !== 'function')
        throw new Failure('invalid_outcome', `machine ${def.name} has no step "${item.step}"`);
      const value = await withTimeout(
        () => marked(mark, () => fn(state, ctx)),
        def.stepTimeoutMs,
        controller,
      );
      return toResult(def, item.id, value);
    } catch (error) {
      failure = toFailure(error);
    }
  }
  return handleFailure(def, item, state, ctx, failure, mark);
}

async function handleFailure(
  def: AnyMachine,
  item: StepItem,
  state: unknown,
  ctx: StepContext,
  failure: StepFailure,
  mark: RunningMark,
): Promise<StepResult> {
  const what = boundText(
    `step "${item.step}" attempt ${item.attempt}: ${failure.message}`,
    MAX_ERROR_MESSAGE,
  );
  const errorDetail = detailOf(failure);
  try {
    const onError = def.onError;
    const outcome: unknown = onError
      ? await withTimeout(
          () => marked(mark, () => onError(failure, state, ctx)),
          onErrorLimitMs(def),
          new AbortController(),
          'onError',
        )
      : defaultOnError(failure, item, def.backoff, state);
    return { ...toResult(def, item.id, outcome), error: what, errorDetail };
  } catch (error) {
    const reason = boundText(`onError failed (${errorMessage(error)}) after ${what}`, MAX_ERROR_MESSAGE);
    return { id: item.id, kind: 'stop', reason, error: what, errorDetail };
  }
}

/** How long `onError` may take: the machine's own step timeout, else 30 s. It is user code too. */
export function onErrorLimitMs(def: AnyMachine): number {
  return def.stepTimeoutSet && def.stepTimeoutMs !== null ? def.stepTimeoutMs : 30_000;
}

/** The default error policy: retry with backoff while attempts remain, then stop. */
export function defaultOnError(
  failure: StepFailure,
  item: Pick<StepItem, 'attempt' | 'maxAttempts'>,
  backoff: ((attempt: number) => unknown) | undefined,
  state: unknown,
): Outcome {
  if (item.attempt + 1 >= item.maxAttempts) {
    return stop(`${failure.message} (gave up after ${item.attempt + 1} attempt${item.attempt ? 's' : ''})`);
  }
  const delay = backoff ? backoff(item.attempt) : defaultBackoff(item.attempt);
  const ms = parseDuration(delay);
  return retry(state, typeof ms === 'number' ? ms : defaultBackoff(item.attempt));
}

async function withTimeout<T>(
  run: () => T | Promise<T>,
  timeoutMs: number | null,
  controller: AbortController,
  what = 'step',
): Promise<T> {
  if (timeoutMs === null) return await run();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const failure = new Failure('timeout', `${what} timed out after ${timeoutMs}ms`);
      controller.abort(failure);
      reject(failure);
    }, timeoutMs);
  });
  try {
    return await Promise.race([Promise.resolve().then(run), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Validates an outcome against its machine and serialises it for the commit. */
export function toResult(def: AnyMachine, id: string, value: unknown): StepResult {
  if (!isOutcome(value)) {
    throw new Failure(
      'invalid_outcome',
      `returned ${describe(value)}, not an outcome (next, retry, done or stop)`,
    );
  }
  switch (value.kind) {
    case 'next': {
      if (typeof value.step !== 'string' || !Object.hasOwn(def.steps, value.step)) {
        const known = Object.keys(def.steps).join(', ');
        throw new Failure(
          'invalid_outcome',
          `next() names unknown step "${String(value.step)}" (${def.name} has: ${known})`,
        );
      }
      return {
        id,
        kind: 'next',
        step: value.step,
        state: serializeState(def, value.state),
        delayMs: delayMs(value.delay),
      };
    }
    case 'retry':
      return { id, kind: 'retry', state: serializeState(def, value.state), delayMs: delayMs(value.delay) };
    case 'done': {
      const bad = findNonJson(value.result, 'result');
      if (bad) throw new Failure('invalid_outcome', `${bad.path}: ${bad.reason}`);
      return { id, kind: 'done', result: toJson(value.result) };
    }
    case 'stop':
      return { id, kind: 'stop', reason: boundText(String(value.reason), MAX_ERROR_MESSAGE) };
    default:
      return assertNever(value, 'outcome');
  }
}

function serializeState(def: AnyMachine, state: unknown): string {
  const parsed = def.state.safeParse(state);
  if (!parsed.success) {
    const { path, message } = describeZodIssues('state', parsed.error.issues);
    throw new Failure('invalid_state', `invalid state at ${path}: ${message}`);
  }
  const bad = findNonJson(parsed.data, 'state');
  if (bad) throw new Failure('invalid_state', `invalid state at ${bad.path}: ${bad.reason}`);
  if (parsed.data === undefined) throw new Failure('invalid_state', 'invalid state: undefined is not JSON');
  return JSON.stringify(parsed.data);
}

function delayMs(delay: unknown): number {
  if (delay === undefined) return 0;
  const ms = parseDuration(delay);
  if (typeof ms === 'string') throw new Failure('invalid_outcome', `delay ${ms}`);
  return ms;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return `an object with keys [${Object.keys(value).slice(0, 5).join(', ')}]`;
  return `a ${typeof value} (${(typeof value === 'symbol' ? value.toString() : `${value as string | number | boolean | bigint}`).slice(0, 40)})`;
}

/** Failure codes no retry can mend: the instance fails at once. */
const NEVER_RETRIED = new Set(['join_in_worker']);

/**
 * The outcome of a failure when the machine's own hooks cannot run (its module does not
 * load, or the thread died again while running `onError`): the default policy on the row's
 * stored state.
 */
export function fallbackResult(item: StepItem, failure: StepFailure): StepResult {
  const error = boundText(
    `step "${item.step}" attempt ${item.attempt}: ${failure.message}`,
    MAX_ERROR_MESSAGE,
  );
  const errorDetail = detailOf(failure);
  if (failure.code !== undefined && NEVER_RETRIED.has(failure.code)) {
    return { id: item.id, kind: 'stop', reason: failure.message, error, errorDetail };
  }
  if (item.attempt + 1 >= item.maxAttempts) {
    return {
      id: item.id,
      kind: 'stop',
      reason: `${failure.message} (gave up after ${item.attempt + 1} attempts)`,
      error,
      errorDetail,
    };
  }
  return {
    id: item.id,
    kind: 'retry',
    state: item.state,
    delayMs: defaultBackoff(item.attempt),
    error,
    errorDetail,
  };
}
