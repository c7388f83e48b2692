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
  ValidationError,
  errorMessage,
} from '../runtime/errors.js';
import type { StepEffects } from '../runtime/executor.js';
import {
  correlationKeySchema,
  rateColumns,
  rateLimitSchema,
  toInsertRow,
  weightSchema,
} from '../runtime/insert-options.js';
import { findNonJson, toJson } from '../runtime/json.js';
import type { Mutable } from '../runtime/mutable.js';
import type {
  AnyMachine,
  ChildInfo,
  Signal,
  StepContext,
  StepFailure,
  StepFailureKind,
} from '../runtime/machine.js';
import { type Outcome, assertNever, isOutcome, retry, stop } from '../runtime/outcome.js';
import { signalNameSchema, toSignalRequest } from '../runtime/signal-input.js';
import { isThenable } from '../runtime/thenable.js';
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

/**
 * A step's abort: its `AbortController` is made only when the step reads
 * `ctx.abortSignal` (an aborted one, if the abort came first). Most steps never read it,
 * and a controller with its signal costs more than a no-op step.
 */
class StepAbort {
  #controller: AbortController | undefined;
  #aborted = false;
  #reason: unknown;

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

/** Aborts of the steps running on this thread, for `abortRunningSteps`. */
const running = new Set<StepAbort>();

/** Fires the abort signal of every step running on this thread (forced shutdown). */
export function abortRunningSteps(reason: string): void {
  for (const abort of running) abort.abort(new Error(reason));
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
  const abort = new StepAbort();
  running.add(abort);
  try {
    return await executeWith(def, item, abort, mark);
  } finally {
    running.delete(abort);
  }
}

async function executeWith(
  def: AnyMachine,
  item: StepItem,
  abort: StepAbort,
  mark: RunningMark,
): Promise<StepResult> {
  // Only an explicitly chosen timeout turns tracking on: the 15-minute default is a backstop
  // against promises that never settle, not worth 10% of every step's speed.
  if (def.stepTimeoutSet && def.stepTimeoutMs !== null) trackContinuations();
  const { ctx, effects, seal } = contextFor(item, abort);
  const state: unknown = JSON.parse(item.state);
  let failure = item.failure;
  if (!failure) {
    try {
      const fn = def.steps[item.step];
      if (typeof fn !== 'function')
        throw new Failure('invalid_outcome', `machine ${def.name} has no step "${item.step}"`);
      const value = await withTimeout(() => marked(mark, () => fn(state, ctx)), def.stepTimeoutMs, abort);
      seal();
      const result = toResult(def, item.id, value, inboxView(item, ctx));
      return effects.inserts.length + effects.signals.length > 0 ? { ...result, effects } : result;
    } catch (error) {
      failure = toFailure(error);
    }
  }
  // A failed step's effects are dropped with it: only what `onError` decides is committed.
  seal();
  return handleFailure(def, item, state, ctx, failure, mark);
}

/** What a step was shown of its inbox, for the consumption rules of its outcome. */
interface InboxView {
  /** Ids of `ctx.awaited`: a progressing outcome consumes them. */
  readonly awaited: readonly string[];
  /** Ids of `ctx.all` when the step continues an await: a re-await does not wake on them. */
  readonly seen: readonly string[];
}

function inboxView(item: StepItem, ctx: StepContext): InboxView {
  return {
    awaited: ctx.awaited.map((s) => s.id),
    seen: item.awaiting === null ? [] : ctx.all.map((s) => s.id),
  };
}

/** The lists of a step's context that are empty for most steps, shared (frozen). */
const NONE: readonly never[] = Object.freeze([]);

/** The step's `ctx`, with the effects it records; `seal` ends recording (the step returned). */
function contextFor(
  item: StepItem,
  abort: StepAbort,
): {
  ctx: StepContext;
  effects: { inserts: StepEffects['inserts'][number][]; signals: StepEffects['signals'][number][] };
  seal: () => void;
} {
  // Most steps have no inbox and no children: they share one frozen empty list.
  const all: readonly Signal[] = item.inbox === null ? NONE : Object.freeze(parseInbox(item.inbox));
  const awaiting = item.awaiting;
  const awaited: readonly Signal[] =
    awaiting === null || all.length === 0
      ? NONE
      : Object.freeze(all.filter((s) => awaiting.includes(s.name)));
  const children: readonly ChildInfo[] =
    item.children === null ? NONE : Object.freeze(JSON.parse(item.children) as ChildInfo[]);
  const effects = {
    inserts: [] as StepEffects['inserts'][number][],
    signals: [] as StepEffects['signals'][number][],
  };
  let sealed = false;
  const open = (what: string): void => {
    if (sealed) throw new Error(`ctx.${what} was called after the step returned: it would not be committed`);
  };
  const ctx: StepContext = {
    id: item.id,
    machine: item.machine,
    version: item.version,
    step: item.step,
    attempt: item.attempt,
    maxAttempts: item.maxAttempts,
    correlationKey: item.correlationKey,
    get abortSignal() {
      return abort.signal;
    },
    awaited,
    all,
    timedOut: item.timedOut,
    children,
    enqueue(machine, options) {
      open('enqueue');
      if (typeof options === 'object' && options !== null && 'tx' in options) {
        throw new ValidationError('invalid_input', 'enqueue.tx', 'an effect commits with the outcome: no tx');
      }
      effects.inserts.push(toInsertRow(machine, options, 'enqueue.'));
    },
    signal(target, name, payload = null, options = {}) {
      open('signal');
      effects.signals.push(toSignalRequest(target, name, payload, options, 'signal.'));
    },
  };
  return { ctx, effects, seal: () => void (sealed = true) };
}

function parseInbox(json: string): Signal[] {
  const raw = JSON.parse(json) as Array<{ id: string; name: string; payload: unknown; insertedAt: string }>;
  return raw.map((s) =>
    Object.freeze({ id: s.id, name: s.name, payload: s.payload, insertedAt: new Date(s.insertedAt) }),
  );
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
          new StepAbort(),
          'onError',
        )
      : defaultOnError(failure, item, def.backoff, state);
    return { ...toResult(def, item.id, outcome, inboxView(item, ctx)), error: what, errorDetail };
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
  abort: StepAbort,
  what = 'step',
): Promise<T> {
  // A step that returns without a promise is done: no timer could have fired while it ran
  // (the thread's watchdog deals with code that blocks), so only a promise is raced.
  const value = run();
  if (timeoutMs === null || !isThenable(value)) return await value;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const failure = new Failure('timeout', `${what} timed out after ${timeoutMs}ms`);
      abort.abort(failure);
      reject(failure);
    }, timeoutMs);
  });
  try {
    return await Promise.race([value, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `next()`'s rate limit, validated (a bad one fails the step as an invalid outcome). */
function nextRate(limit: unknown, weight: unknown): NextResult['rate'] {
  if (limit === undefined && weight === undefined) return undefined;
  if (limit === undefined) throw new Failure('invalid_outcome', 'next() weight: give rateLimit too');
  const parsedLimit = rateLimitSchema.safeParse(limit);
  if (!parsedLimit.success) {
    throw new Failure('invalid_outcome', "next() rateLimit: must be a limit name or ['name', partition]");
  }
  const parsedWeight = weightSchema.optional().safeParse(weight);
  if (!parsedWeight.success) throw new Failure('invalid_outcome', 'next() weight: must be an integer >= 1');
  const { rateLimit, ratePartition, weight: w } = rateColumns(parsedLimit.data, parsedWeight.data);
  return { limit: rateLimit!, partition: ratePartition, weight: w };
}

type NextResult = Extract<StepResult, { kind: 'next' }>;

const NO_INBOX: InboxView = { awaited: [], seen: [] };

/** Validates an outcome against its machine and serialises it for the commit. */
export function toResult(
  def: AnyMachine,
  id: string,
  value: unknown,
  inbox: InboxView = NO_INBOX,
): StepResult {
  if (!isOutcome(value)) {
    throw new Failure(
      'invalid_outcome',
      `returned ${describe(value)}, not an outcome (next, retry, awaitSignals, spawn, done or stop)`,
    );
  }
  switch (value.kind) {
    case 'next': {
      const key = value.concurrencyKey;
      if (key !== undefined && key !== null && !correlationKeySchema.safeParse(key).success) {
        throw new Failure(
          'invalid_outcome',
          'next() concurrencyKey: must be a key (1-1,000 characters) or null',
        );
      }
      if (value.inline !== undefined && typeof value.inline !== 'boolean')
        throw new Failure('invalid_outcome', 'next() inline: must be true or false');
      // Set one by one: conditional spreads cost V8 microseconds per step.
      const result: Mutable<NextResult> = {
        id,
        kind: 'next',
        step: knownStep(def, value.step, 'next'),
        state: serializeState(def, value.state),
        delayMs: delayMs(value.delay),
        consumed: inbox.awaited,
      };
      if (key !== undefined) result.concurrencyKey = key;
      const rate = nextRate(value.rateLimit, value.weight);
      if (rate !== undefined) result.rate = rate;
      if ((value.inline ?? def.inline) === true) result.inline = true;
      return result;
    }
    case 'await': {
      const step = knownStep(def, value.step, 'awaitSignals');
      if (!Array.isArray(value.names) || value.names.length === 0) {
        throw new Failure('invalid_outcome', 'awaitSignals() needs a non-empty array of signal names');
      }
      const names = value.names.map((n: unknown, i) => {
        const parsed = signalNameSchema.safeParse(n);
        if (!parsed.success)
          throw new Failure('invalid_outcome', `awaitSignals() names[${i}]: must be a signal name`);
        return parsed.data;
      });
      const timeoutMs = value.timeout === undefined ? null : delayMs(value.timeout);
      return {
        id,
        kind: 'await',
        step,
        state: serializeState(def, value.state),
        names: [...new Set(names)],
        timeoutMs,
        seen: inbox.seen,
      };
    }
    case 'spawn': {
      const step = knownStep(def, value.step, 'spawn');
      if (!Array.isArray(value.children))
        throw new Failure('invalid_outcome', 'spawn() needs an array of children');
      const children = value.children.map((child: unknown, i) => {
        const { machine, tx, ...options } = (child ?? {}) as { machine?: unknown; tx?: unknown };
        try {
          if (tx !== undefined)
            throw new ValidationError('invalid_input', 'tx', 'children commit with the outcome: no tx');
          return toInsertRow(machine, options, '');
        } catch (error) {
          throw new Failure('invalid_outcome', `spawn() children[${i}]: ${errorMessage(error)}`);
        }
      });
      return {
        id,
        kind: 'spawn',
        step,
        state: serializeState(def, value.state),
        children,
        consumed: inbox.awaited,
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

function knownStep(def: AnyMachine, step: unknown, what: string): string {
  if (typeof step !== 'string' || !Object.hasOwn(def.steps, step)) {
    const known = Object.keys(def.steps).join(', ');
    throw new Failure(
      'invalid_outcome',
      `${what}() names unknown step "${String(step)}" (${def.name} has: ${known})`,
    );
  }
  return step;
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
