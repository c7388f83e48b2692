/**
 * Validation of `insert` / `insertAll` input, before anything touches the database: the
 * options themselves (unknown options are errors), the machine, and the state or args
 * against the machine's schema and JSON.
 */
import { z } from 'zod';
import { type Duration, durationSchema } from './duration.js';
import { ValidationError, parseInput } from './errors.js';
import { badText, findNonJson } from './json.js';
import { type AnyMachine, NAME_PATTERN, isMachineDefinition } from './machine.js';
import type { SchemaInput } from './zod-schema.js';
import type { Queryable } from './sql/db.js';
import type { InsertRow } from './sql/instances.js';
import { ALL_STATUSES, LIVE_STATUSES, type Status } from './status.js';

const statusSchema = z.enum(ALL_STATUSES as [Status, ...Status[]]);

/** Longest key in UTF-8 bytes: a btree entry holds at most ~2,700 bytes (found by a test: 3,000 bytes of CJK failed the insert). */
export const MAX_KEY_BYTES = 2_000;

/** A correlation or dedup key: 1-1,000 characters, at most 2,000 bytes of UTF-8, storable. */
export const correlationKeySchema = z
  .string()
  .min(1)
  .max(1_000)
  .refine((k) => badText(k) === null, 'must not contain U+0000 or lone surrogates')
  .refine(
    (k) => Buffer.byteLength(k, 'utf8') <= MAX_KEY_BYTES,
    `must be at most ${MAX_KEY_BYTES} bytes of UTF-8`,
  );

/** A rate limit's name: as a queue name. */
export const rateLimitNameSchema = z
  .string()
  .regex(NAME_PATTERN, 'must be 1-200 characters of letters, digits, _ . : / -');

/** `'name'` for a limit's one bucket, `['name', partition]` for a bucket per partition. */
export const rateLimitSchema = z.union([
  rateLimitNameSchema,
  z.tuple([rateLimitNameSchema, correlationKeySchema]),
]);

/** Tokens a step takes from its bucket. */
export const weightSchema = z.number().int().min(1).max(1_000_000);

export type RateLimitRef = z.infer<typeof rateLimitSchema>;

/** The columns a rate limit reference is stored in. */
export function rateColumns(
  limit: RateLimitRef | undefined,
  weight: number | undefined,
): { rateLimit: string | null; ratePartition: string | null; weight: number } {
  if (limit === undefined) return { rateLimit: null, ratePartition: null, weight: 1 };
  const [name, partition] = typeof limit === 'string' ? [limit, null] : limit;
  return { rateLimit: name, ratePartition: partition, weight: weight ?? 1 };
}

export const insertOptionsSchema = z
  .object({
    state: z.unknown().optional(),
    args: z.unknown().optional(),
    queue: z
      .string()
      .regex(NAME_PATTERN, 'must be 1-200 characters of letters, digits, _ . : / -')
      .optional(),
    priority: z.number().int().min(-32768).max(32767).optional(),
    runAt: z
      .date()
      .refine((d) => !Number.isNaN(d.getTime()), 'is an invalid Date')
      .optional(),
    delay: durationSchema.optional(),
    correlationKey: correlationKeySchema.optional(),
    concurrencyKey: correlationKeySchema.optional(),
    rateLimit: rateLimitSchema.optional(),
    weight: weightSchema.optional(),
    correlationScope: z
      .array(statusSchema)
      .refine(
        (scope) => scope.length === 0 || LIVE_STATUSES.every((s) => scope.includes(s)),
        `must be [] (address only) or include every live status (${LIVE_STATUSES.join(', ')}), optionally with terminal ones`,
      )
      .optional(),
    maxAttempts: z.number().int().min(1).max(10_000).optional(),
    tx: z
      .custom<Queryable>(
        (v) => typeof (v as Queryable | undefined)?.query === 'function',
        'must be a pg client',
      )
      .optional(),
  })
  .strict()
  .refine((o) => o.runAt === undefined || o.delay === undefined, {
    message: 'give runAt or delay, not both',
    path: ['delay'],
  })
  .refine((o) => o.weight === undefined || o.rateLimit !== undefined, {
    message: 'is the tokens a rate-limited step takes: give rateLimit too',
    path: ['weight'],
  });

/** Options of `insert` (and of each `insertAll` item) besides the state or args. */
export interface InsertSettings {
  /** Overrides the machine's queue. */
  readonly queue?: string;
  /** Lower runs first; default the machine's priority (0). */
  readonly priority?: number;
  readonly runAt?: Date;
  readonly delay?: Duration;
  /** Addresses the instance and deduplicates inserts while the key is occupied. */
  readonly correlationKey?: string;
  /** Statuses in which the key is occupied; default all live statuses; `[]` addresses only. */
  readonly correlationScope?: readonly Status[];
  /**
   * Steps sharing this key run one at a time across the cluster (or up to a configured
   * gate's limit for keys `<gate>:...`); kept across steps, changed or released by `next`.
   */
  readonly concurrencyKey?: string;
  /**
   * The first step takes a token of this rate limit (declared by `rateLimits` at join) before
   * it runs: `'name'`, or `['name', partition]` for a bucket per partition.
   */
  readonly rateLimit?: RateLimitRef;
  /** Tokens the first step takes (default 1; needs `rateLimit`). */
  readonly weight?: number;
  readonly maxAttempts?: number;
  /** The caller's `pg` client inside a transaction: the row exists iff it commits. */
  readonly tx?: Queryable;
}

/** `key` typed `V`: required unless `V` accepts `undefined` (a schema with a default). */
type Field<Key extends string, V> = undefined extends V
  ? { readonly [P in Key]?: V }
  : { readonly [P in Key]: V };

/**
 * Options of `insert(machine, options)` (and of each `insertAll` item), typed by the
 * definition: a machine takes `state`, a job `args`, typed as its schema's input. For a
 * definition whose kind is not known statically (`AnyMachine`, the default) both are
 * `unknown` and optional; the values are validated at run time either way.
 */
export type InsertOptions<M extends AnyMachine = AnyMachine> = InsertSettings &
  (M['kind'] extends 'machine'
    ? Field<'state', SchemaInput<M['state']>> & {
        /** Not for a machine: pass `state`. */
        readonly args?: undefined;
      }
    : M['kind'] extends 'job'
      ? Field<'args', SchemaInput<M['state']>> & {
          /** Not for a job: pass `args`. */
          readonly state?: undefined;
        }
      : {
          /** The initial state of a machine (validated with its schema). */
          readonly state?: unknown;
          /** The arguments of a job (validated with its schema). */
          readonly args?: unknown;
        });

/** Validates one insert and turns it into the row to write. `path` prefixes field names. */
export function toInsertRow(machine: unknown, options: unknown, path: string): InsertRow {
  if (!isMachineDefinition(machine)) {
    throw new ValidationError(
      'unknown_machine',
      `${path}machine`,
      'is not a defineMachine/defineJob definition',
    );
  }
  const o = parseInput(insertOptionsSchema, options ?? {}, path.replace(/\.$/, ''));
  const field = machine.kind === 'job' ? 'args' : 'state';
  const other = machine.kind === 'job' ? 'state' : 'args';
  if ((other === 'args' ? o.args : o.state) !== undefined) {
    throw new ValidationError(
      'invalid_input',
      `${path}${other}`,
      `${machine.name} is a ${machine.kind}: pass ${field}, not ${other}`,
    );
  }
  return {
    fsm: machine.name,
    version: machine.version,
    step: String(machine.initial),
    state: serializeInput(machine, field === 'args' ? o.args : o.state, `${path}${field}`),
    queue: o.queue ?? machine.queue,
    priority: o.priority ?? machine.priority,
    delayMs: o.delay ?? 0,
    runAt: o.runAt ?? null,
    correlationKey: o.correlationKey ?? null,
    correlationScope: `{${(o.correlationScope ?? LIVE_STATUSES).join(',')}}`,
    concurrencyKey: o.concurrencyKey ?? null,
    ...rateColumns(o.rateLimit, o.weight),
    maxAttempts: o.maxAttempts ?? machine.maxAttempts,
  };
}

function serializeInput(machine: AnyMachine, value: unknown, path: string): string {
  // Any zod 4 schema (of any copy of zod) parses like ours: only `safeParse` is called.
  const state: unknown = parseInput(machine.state as unknown as z.ZodType, value, path, 'invalid_state');
  const bad = findNonJson(state, path);
  if (bad) throw new ValidationError('not_serializable', bad.path, bad.reason);
  if (state === undefined) throw new ValidationError('invalid_state', path, 'is required');
  return JSON.stringify(state);
}
