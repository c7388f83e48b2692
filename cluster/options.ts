/**
 * `Cluster.join` options: what users pass (`JoinOptions`, the zod input) and the resolved,
 * frozen configuration (`NodeConfig`, the zod output). A bad option is a `ValidationError`
 * naming its path, e.g. `queues.checkout.threads`.
 */
import type pg from 'pg';
import { loadPg } from '../runtime/pg.js';
import { z } from 'zod';
import { connectionStringSchema } from '../runtime/connection.js';
import { durationSchema, timerDurationSchema } from '../runtime/duration.js';
import { parseInput } from '../runtime/errors.js';
import { rateLimitNameSchema } from '../runtime/insert-options.js';
import { NAME_PATTERN } from '../runtime/machine.js';
import { validateSchemaName } from '../runtime/sql/db.js';

const gcObjectSchema = z
  .object({
    /** Terminal rows whose last write is older than this are deleted. */
    retention: durationSchema.default(86_400_000),
    /** Rows deleted by one statement at most; a full batch sweeps again at once. */
    batch: z.number().int().min(1).max(100_000).default(1_000),
    /** How often the leader sweeps. */
    interval: timerDurationSchema.default(60_000),
  })
  .strict();

/**
 * GC of finished rows (a leader service): its settings, or `false` to disable it. Not a
 * `z.union`, whose error would name only `gc`: an object is parsed by the object schema, so
 * a bad field is reported at its own path (`gc.batch`).
 */
const gcSchema = z
  .custom<false | z.input<typeof gcObjectSchema>>()
  .transform((value, ctx): false | z.output<typeof gcObjectSchema> => {
    if (value === false) return false;
    const parsed = gcObjectSchema.safeParse(value);
    if (parsed.success) return parsed.data;
    for (const issue of parsed.error.issues)
      ctx.addIssue({
        code: 'custom',
        message: issue.message,
        path: issue.path.map((p) => p as string | number),
      });
    return z.NEVER;
  });

const queueSchema = z
  .object({
    /** Steps of this queue in flight on this node at most. */
    concurrency: z.number().int().min(1).max(10_000).default(10),
    /** Worker threads of this queue's pool. */
    threads: z.number().int().min(1).max(256).default(1),
    /** Rows claimed by one pick at most (default: the concurrency plus `claimAhead`, capped at 1,000). */
    batchSize: z.number().int().min(1).max(10_000).optional(),
    /**
     * Rows claimed ahead of free slots at most, held under lease until a slot frees (default:
     * 16 × the concurrency, capped at 1,000; 0 turns it off). The node holds at most twice
     * what it finished during its last pick, so long steps claim (almost) nothing ahead.
     */
    claimAhead: z.number().int().min(0).max(10_000).optional(),
    /** Heap limit of each thread in MB; a step that exceeds it kills only its thread. */
    memoryLimitMb: z.number().int().min(16).max(65_536).optional(),
  })
  .strict();

export const joinOptionsSchema = z
  .object({
    connectionString: connectionStringSchema.optional(),
    pool: z.custom<pg.Pool>((v) => v instanceof loadPg().Pool, 'must be a pg.Pool').optional(),
    schema: z
      .string()
      .default('public')
      .superRefine((s, ctx) => {
        try {
          validateSchemaName(s);
        } catch (e) {
          ctx.addIssue({ code: 'custom', message: (e as Error).message });
        }
      }),
    machines: z.array(z.unknown()).default([]),
    resolve: z
      .custom<(name: string, version: number) => string | undefined>((v) => typeof v === 'function')
      .optional(),
    queues: z
      .record(
        z.string().regex(NAME_PATTERN, 'queue names are 1-200 characters of letters, digits, _ . : / -'),
        queueSchema,
      )
      .default({ default: { concurrency: 10, threads: 1 } }),
    /**
     * Gates raising the concurrency of keys named `<gate>:...` from 1 to `limit` steps at
     * once, cluster-wide: `{ stripe: { limit: 100 } }`. Nodes should agree on them.
     */
    concurrencyLimits: z
      .record(
        z
          .string()
          .regex(/^[A-Za-z0-9_.\/-]{1,200}$/, 'gate names are 1-200 characters of letters, digits, _ . / -'),
        z.object({ limit: z.number().int().min(1).max(10_000) }).strict(),
      )
      .default({}),
    /**
     * Token-bucket rate limits, declared cluster-wide (stored in `gen_durable_rate_configs`,
     * the latest joining node's settings win): `{ stripe: { allowed: 100, period: '1m' } }`
     * lets steps naming `stripe` start 100 times a minute, in bursts of up to `burst`
     * (default `allowed`). A step opts in with `rateLimit` (insert, `next`).
     */
    rateLimits: z
      .record(
        rateLimitNameSchema,
        z
          .object({
            allowed: z.number().int().min(1).max(1_000_000_000),
            period: timerDurationSchema,
            burst: z.number().int().min(1).max(1_000_000_000).optional(),
          })
          .strict()
          .transform((l) => ({ allowed: l.allowed, periodMs: l.period, burst: l.burst ?? l.allowed })),
      )
      .default({}),
    /** How often the leader prunes rate-limit buckets that are full again or of undeclared limits. */
    bucketHousekeepingInterval: timerDurationSchema.default(60_000),
    /** How long a claim holds without a heartbeat. */
    lease: timerDurationSchema.default(30_000),
    /**
     * How often the node heartbeats (and extends its leases): at most half the lease.
     * Default: a third of the lease, at most 5 s.
     */
    heartbeat: timerDurationSchema.optional(),
    /**
     * Safety net for a notification that never arrived: each feeder claims this often, and
     * the leader's stager looks up every queue's next due time this often.
     */
    pollInterval: timerDurationSchema.default(30_000),
    /**
     * The election's fallback round: a follower tries the leader lock, the leader confirms
     * it. Rounds are driven by the heartbeat (which sees who holds the lock) and by a
     * stopping leader's notice; this bounds failover only if both fail.
     */
    campaignInterval: timerDurationSchema.default(30_000),
    /** How often the leader reaps expired leases and dead nodes' claims. */
    reapInterval: timerDurationSchema.default(10_000),
    /** GC of finished rows: `{ retention, batch, interval }` (1 day, 1,000, 1 min), or `false`. */
    gc: gcSchema.prefault({}),
    /** How long past its timeout a step may block its thread before the thread is terminated. */
    timeoutGrace: timerDurationSchema.default(1_000),
    /** Outcomes committed by one flush at most. */
    flushBatch: z.number().int().min(1).max(10_000).default(1_000),
    /**
     * Connections of the node's pool (flushes, guarded picks, heartbeats, the client). Besides
     * it a node opens its LISTEN connection, one for the leader lock, and one per queue for
     * plain picks (`runtime/sql/pick-pool.ts`), closed when idle.
     */
    poolSize: z.number().int().min(2).max(100).default(10),
    /** Apply migrations when joining (safe with concurrent joiners). */
    migrate: z.boolean().default(true),
    nodeId: z.string().regex(NAME_PATTERN).optional(),
  })
  .strict()
  .superRefine((o, ctx) => {
    if ((o.connectionString === undefined) === (o.pool === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['connectionString'],
        message: 'give exactly one of connectionString or pool',
      });
    }
    if (o.heartbeat !== undefined && o.heartbeat * 2 > o.lease) {
      ctx.addIssue({
        code: 'custom',
        path: ['heartbeat'],
        message: `must be at most half the lease (${o.lease}ms)`,
      });
    }
    if (Object.keys(o.queues).length === 0) {
      ctx.addIssue({ code: 'custom', path: ['queues'], message: 'needs at least one queue' });
    }
  });

/** The default heartbeat interval: a third of the lease, at most 5 s. */
export function defaultHeartbeat(leaseMs: number): number {
  return Math.max(1, Math.min(5_000, Math.floor(leaseMs / 3)));
}

const resolvedOptionsSchema = joinOptionsSchema.transform((o) => ({
  ...o,
  heartbeat: o.heartbeat ?? defaultHeartbeat(o.lease),
}));

export type JoinOptions = z.input<typeof joinOptionsSchema>;
export type NodeConfig = Readonly<z.output<typeof resolvedOptionsSchema>>;

export function parseJoinOptions(options: unknown): NodeConfig {
  return Object.freeze(parseInput(resolvedOptionsSchema, options, ''));
}
