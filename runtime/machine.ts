/**
 * Machine and job definitions. A definition is plain data plus step functions; it records
 * the module it lives in (`module: import.meta.url`) so that a worker thread can import it
 * by itself. The same definition object is used by the client (to validate inserts) and by
 * worker threads (to run steps).
 */
import { z } from 'zod';
import { DEFAULT_MAX_ATTEMPTS } from './backoff.js';
import { type Duration, timerDurationSchema } from './duration.js';
import { parseInput } from './errors.js';
import type { Target } from './instance.js';
import type { InsertOptions } from './insert-options.js';
import { type Jsonified, badText } from './json.js';
import {
  type DoneOutcome,
  type Outcome,
  type RetryOutcome,
  type StopOutcome,
  done,
  isOutcome,
} from './outcome.js';
import {
  type SchemaInput,
  type SchemaOutput,
  type StateSchema,
  type ZodLike,
  zodSchemaField,
} from './zod-schema.js';
import { isThenable } from './thenable.js';

/** A signal in an instance's inbox. */
export interface Signal {
  readonly id: string;
  readonly name: string;
  readonly payload: unknown;
  readonly insertedAt: Date;
}

/** A child of the instance's latest `spawn`, as `ctx.children` shows it once all have ended. */
export interface ChildInfo {
  readonly id: string;
  readonly machine: string;
  readonly status: 'done' | 'failed' | 'cancelled';
  readonly state: unknown;
  readonly result: unknown;
  readonly error: string | null;
}

/** What a step sees besides its state. */
export interface StepContext {
  readonly id: string;
  readonly machine: string;
  readonly version: number;
  readonly step: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly correlationKey: string | null;
  /** Fired when the step times out and when the node is forced to shut down. */
  readonly abortSignal: AbortSignal;
  /** The signals matching the await that woke this step (consumed by `next` and `spawn`). */
  readonly awaited: readonly Signal[];
  /** The whole inbox, in arrival order. */
  readonly all: readonly Signal[];
  /** The await's deadline woke this step. */
  readonly timedOut: boolean;
  /** The children of the spawn this step joins (empty otherwise). */
  readonly children: readonly ChildInfo[];
  /**
   * Inserts an instance in the same transaction as this step's outcome: never before it,
   * never without it. Validated at once (a bad insert throws here).
   */
  enqueue<M extends AnyMachine>(machine: M, options: NoInfer<EnqueueOptions<M>>): void;
  /** Sends a signal in the same transaction as this step's outcome. */
  signal(target: Target, name: string, payload?: unknown, options?: { readonly dedupKey?: string }): void;
}

/** `insert`'s options without `tx` (an effect commits in the outcome's transaction). */
export type EnqueueOptions<M extends AnyMachine = AnyMachine> = Omit<InsertOptions<M>, 'tx'>;

/** An error handed to `onError`: what went wrong with a step. */
export interface StepFailure {
  readonly message: string;
  readonly name: string;
  /** `'thrown'` (throw or rejection), `'invalid_outcome'`, `'invalid_state'`, `'timeout'`, `'thread_exit'`. */
  readonly kind: StepFailureKind;
  /** The thrown error's `code`, when it had one (e.g. `ECONNRESET`, a SQLSTATE). */
  readonly code?: string;
  /** The thrown error's stack, bounded in size. */
  readonly stack?: string;
}
export type StepFailureKind = 'thrown' | 'invalid_outcome' | 'invalid_state' | 'timeout' | 'thread_exit';

export type StepFn<K extends string, S, In> = (
  state: S,
  ctx: StepContext,
) => Outcome<K, In> | Promise<Outcome<K, In>>;
export type OnErrorFn<K extends string, S, In> = (
  error: StepFailure,
  state: S,
  ctx: StepContext,
) => Outcome<K, In> | Promise<Outcome<K, In>>;

/** A machine's steps as its config declares them. */
export type StepsConfig<K extends string, Schema extends StateSchema> = {
  readonly [P in K]: StepFn<NoInfer<K>, SchemaOutput<Schema>, SchemaInput<Schema>>;
};

/**
 * `Steps` and `OnError` are the step functions and `onError` as written (inferred by
 * `defineMachine`), from which the machine's result type is read.
 */
export interface MachineConfig<
  Schema extends StateSchema,
  K extends string,
  Steps = StepsConfig<K, Schema>,
  OnError = OnErrorFn<NoInfer<K>, SchemaOutput<Schema>, SchemaInput<Schema>>,
> {
  /** Where worker threads import this definition from: pass `import.meta.url`. */
  readonly module: string;
  readonly name: string;
  readonly version?: number;
  /** Default queue of new instances; defaults to `'default'`. */
  readonly queue?: string;
  readonly state: Schema;
  readonly initial: NoInfer<K>;
  readonly steps: StepsConfig<K, Schema> & Steps;
  readonly onError?: OnErrorFn<NoInfer<K>, SchemaOutput<Schema>, SchemaInput<Schema>> & OnError;
  readonly maxAttempts?: number;
  readonly backoff?: (attempt: number) => Duration;
  /**
   * How long a step may run before it is aborted and counts as an error (default 15 minutes,
   * so a promise that never settles cannot hold its slot and its row forever); `null` for no
   * limit.
   */
  readonly stepTimeout?: Duration | null;
  readonly priority?: number;
  /**
   * Run-ahead: after a `next` is committed, its step runs on this node at once, on the
   * claim already held, with no pick in between (default false; `next(..., { inline })`
   * overrides it per outcome). Same results and durability, fewer round trips.
   */
  readonly inline?: boolean;
}

/** Whether a definition is a machine (`defineMachine`) or a job (`defineJob`). */
export type DefinitionKind = 'machine' | 'job';

/** Type-only key of a definition's result type (no such property exists at run time). */
declare const RESULT: unique symbol;

/**
 * A machine or job definition. `Result` is the static type of its `done` result as read back
 * (see `ResultOf`); `Kind` is `'machine'` or `'job'` for definitions from `defineMachine` /
 * `defineJob`, both for definitions of either kind.
 */
export interface MachineDefinition<
  Schema extends StateSchema = StateSchema,
  K extends string = string,
  Result = unknown,
  Kind extends DefinitionKind = DefinitionKind,
> {
  readonly type: 'gen-durable/machine';
  readonly kind: Kind;
  /** Type-only: the result type. */
  readonly [RESULT]?: Result;
  readonly module: string;
  readonly name: string;
  readonly version: number;
  readonly queue: string;
  readonly state: Schema;
  readonly initial: K;
  readonly steps: { readonly [P in K]: StepFn<K, SchemaOutput<Schema>, SchemaInput<Schema>> };
  readonly onError: OnErrorFn<K, SchemaOutput<Schema>, SchemaInput<Schema>> | undefined;
  readonly maxAttempts: number;
  readonly backoff: ((attempt: number) => Duration) | undefined;
  /** The step timeout in ms, or null for none. */
  readonly stepTimeoutMs: number | null;
  /** Whether the step timeout was chosen by the definition (not the default). */
  readonly stepTimeoutSet: boolean;
  readonly priority: number;
  /** Whether a `next` runs its step ahead on the same claim by default (always false for jobs). */
  readonly inline: boolean;
}

/** The step timeout of a definition that sets none: 15 minutes (pg-boss's default too). */
export const DEFAULT_STEP_TIMEOUT_MS = 15 * 60_000;

/** A definition whose state and step types are not known statically (registries, workers). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyMachine = MachineDefinition<StateSchema & ZodLike, any>;

/** The static type of a definition's `done` result as read back; `unknown` when not inferred. */
export type ResultOf<M> = M extends { readonly [RESULT]?: infer R } ? Exclude<R, undefined> : unknown;

/** What results the `done(...)` outcomes among `O` carry. */
type DoneResults<O> = O extends DoneOutcome<infer R> ? R : never;
/** Results from step functions (and `onError`) as written; `never` becomes `unknown`. */
type KnownOr<T> = [T] extends [never] ? unknown : T;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type ReturnOf<F> = F extends (...args: any[]) => infer O ? Awaited<O> : never;
export type MachineResult<Steps, OnError> = KnownOr<
  Jsonified<DoneResults<{ [P in keyof Steps]: ReturnOf<Steps[P]> }[keyof Steps] | ReturnOf<OnError>>>
>;
/** What a job's `perform` returning `R` finishes with (`stop`/`retry` are no results). */
export type JobResult<R> = KnownOr<Jsonified<PerformResult<Awaited<R>>>>;
type PerformResult<V> = V extends StopOutcome | RetryOutcome
  ? never
  : V extends DoneOutcome<infer D>
    ? D
    : V extends undefined | void
      ? null
      : V;

export const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,199}$/;
const nameSchema = z.string().regex(NAME_PATTERN, 'must be 1-200 characters of letters, digits, _ . : / -');

const baseConfigSchema = z.object({
  module: z
    .string()
    .refine(
      (m) => /^(file|data|node):/.test(m) || m.startsWith('/'),
      'must be a module URL (import.meta.url)',
    ),
  name: nameSchema,
  version: z.number().int().min(1).max(2_147_483_647).default(1),
  queue: nameSchema.default('default'),
  maxAttempts: z.number().int().min(1).max(10_000).default(DEFAULT_MAX_ATTEMPTS),
  backoff: z.function().optional(),
  onError: z.function().optional(),
  stepTimeout: timerDurationSchema.nullable().optional(),
  priority: z.number().int().min(-32768).max(32767).default(0),
});

const machineConfigSchema = baseConfigSchema
  .extend({
    state: zodSchemaField(),
    initial: z.string().min(1),
    steps: z.record(
      z
        .string()
        .min(1)
        .max(200)
        .refine((k) => badText(k) === null, 'step names must be storable text'),
      z.function(),
    ),
    inline: z.boolean().default(false),
  })
  .strict()
  .superRefine((cfg, ctx) => {
    if (Object.keys(cfg.steps).length === 0)
      ctx.addIssue({ code: 'custom', path: ['steps'], message: 'needs at least one step' });
    if (!Object.hasOwn(cfg.steps, cfg.initial))
      ctx.addIssue({
        code: 'custom',
        path: ['initial'],
        message: `"${cfg.initial}" is not one of the steps`,
      });
  });

/** Defines a durable state machine. */
export function defineMachine<
  Schema extends StateSchema,
  const K extends string,
  Steps extends object,
  OnError,
>(
  config: MachineConfig<Schema, K, Steps, OnError>,
): MachineDefinition<Schema, K, MachineResult<Steps, OnError>, 'machine'> {
  const cfg = parseInput(
    machineConfigSchema,
    config,
    '',
    'invalid_input',
    `machine ${String((config as { name?: unknown }).name)}`,
  );
  return Object.freeze({
    type: 'gen-durable/machine',
    kind: 'machine',
    module: cfg.module,
    name: cfg.name,
    version: cfg.version,
    queue: cfg.queue,
    state: config.state,
    initial: config.initial,
    steps: config.steps,
    onError: config.onError,
    maxAttempts: cfg.maxAttempts,
    backoff: config.backoff,
    stepTimeoutMs: cfg.stepTimeout === undefined ? DEFAULT_STEP_TIMEOUT_MS : cfg.stepTimeout,
    stepTimeoutSet: cfg.stepTimeout !== undefined,
    priority: cfg.priority,
    inline: cfg.inline,
  });
}

export interface JobConfig<Schema extends StateSchema, R = unknown> {
  readonly module: string;
  readonly name: string;
  readonly version?: number;
  readonly queue?: string;
  readonly args: Schema;
  readonly maxAttempts?: number;
  readonly backoff?: (attempt: number) => Duration;
  /** As for machines: default 15 minutes, `null` for no limit. */
  readonly stepTimeout?: Duration | null;
  readonly priority?: number;
  /** Returning a value finishes the job as `done(value)`; returning `stop(reason)` fails it at once. */
  readonly perform: (args: SchemaOutput<Schema>, ctx: StepContext) => R;
}

/** A job: a one-step definition whose `Result` is what `perform` finishes with. */
export type JobDefinition<Schema extends StateSchema = StateSchema, Result = unknown> = MachineDefinition<
  Schema,
  'perform',
  Result,
  'job'
>;

const jobConfigSchema = baseConfigSchema
  .extend({
    args: zodSchemaField(),
    perform: z.function(),
  })
  .strict();

/** The only step of a job. */
export const JOB_STEP = 'perform';

/** Defines a one-step durable job. */
export function defineJob<Schema extends StateSchema, R>(
  config: JobConfig<Schema, R>,
): JobDefinition<Schema, JobResult<R>> {
  const cfg = parseInput(
    jobConfigSchema,
    config,
    '',
    'invalid_input',
    `job ${String((config as { name?: unknown }).name)}`,
  );
  const perform = config.perform;
  type JobOutcome = Outcome<'perform', SchemaInput<Schema>>;
  const finish = (value: unknown): JobOutcome =>
    isOutcome(value) && (value.kind === 'stop' || value.kind === 'retry' || value.kind === 'done')
      ? (value as JobOutcome)
      : done(value);
  // Synchronous when `perform` is: a step that returns no promise runs without the timer its
  // timeout would need (see `withTimeout`), which costs a quick job more than its own work.
  const step = (args: SchemaOutput<Schema>, ctx: StepContext): JobOutcome | Promise<JobOutcome> => {
    const value: unknown = perform(args, ctx);
    return isThenable(value) ? Promise.resolve(value).then(finish) : finish(value);
  };
  return Object.freeze({
    type: 'gen-durable/machine',
    kind: 'job',
    module: cfg.module,
    name: cfg.name,
    version: cfg.version,
    queue: cfg.queue,
    state: config.args,
    initial: JOB_STEP,
    steps: { perform: step },
    onError: undefined,
    maxAttempts: cfg.maxAttempts,
    backoff: config.backoff,
    stepTimeoutMs: cfg.stepTimeout === undefined ? DEFAULT_STEP_TIMEOUT_MS : cfg.stepTimeout,
    stepTimeoutSet: cfg.stepTimeout !== undefined,
    priority: cfg.priority,
    inline: false,
  });
}

export function isMachineDefinition(value: unknown): value is AnyMachine {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { type?: unknown }).type === 'gen-durable/machine'
  );
}

export function machineKey(name: string, version: number): string {
  return `${name}@${version}`;
}
