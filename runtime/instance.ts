/**
 * How callers address an instance (an id, a typed id, `{ key }`) and what they read back (a
 * snapshot of its row, the answer of `waitFor`).
 */
import type { AnyMachine } from './machine.js';
import type { InstanceRow } from './sql/instances.js';
import { type Status, isTerminal } from './status.js';

/** An instance id: a positive Postgres bigint, as a string. */
export function isInstanceId(value: unknown): boolean {
  return (
    typeof value === 'string' && /^[1-9]\d{0,18}$/.test(value) && BigInt(value) <= 9_223_372_036_854_775_807n
  );
}

/** Instance ids (decimal bigints) in numeric order. */
export function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** An instance id, or `{ key }` for the instance its correlation key addresses. */
export type Target = string | { readonly key: string };

/** Type-only key of a typed id's definition (no such property exists at run time). */
declare const DEFINITION: unique symbol;

/**
 * An instance id (a string at run time) that remembers, in its type only, the definition it
 * was inserted with, so that `waitFor` knows the result's type.
 */
export type TypedId<M extends AnyMachine = AnyMachine> = string & { readonly [DEFINITION]: M };

export interface Snapshot {
  readonly id: string;
  readonly machine: string;
  readonly version: number;
  readonly status: Status;
  readonly step: string;
  readonly state: unknown;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly queue: string;
  readonly priority: number;
  readonly eligibleAt: Date;
  readonly result: unknown;
  readonly error: string | null;
  readonly errors: readonly unknown[];
  readonly correlationKey: string | null;
  readonly concurrencyKey: string | null;
  /** The rate limit the next step takes tokens of: `'name'` or `['name', partition]`; null for none. */
  readonly rateLimit: string | readonly [string, string] | null;
  /** Tokens the next step takes of its rate limit. */
  readonly weight: number;
  readonly parentId: string | null;
  readonly lockedBy: string | null;
  readonly leaseExpiresAt: Date | null;
  readonly insertedAt: Date;
  readonly updatedAt: Date;
}

/** What `waitFor` answers; `R` is the result's type when `done` (known from a typed id). */
export type WaitResult<R = unknown> =
  | { readonly status: 'done'; readonly result: R; readonly snapshot: Snapshot }
  | { readonly status: 'failed' | 'cancelled'; readonly error: string | null; readonly snapshot: Snapshot }
  | { readonly status: 'busy'; readonly snapshot: Snapshot };

/** `waitFor`'s answer for a settled (terminal) instance. */
export function settledResult(snapshot: Snapshot): WaitResult {
  if (snapshot.status === 'done') return { status: 'done', result: snapshot.result, snapshot };
  return { status: snapshot.status as 'failed' | 'cancelled', error: snapshot.error, snapshot };
}

/** A snapshot settled: its status is terminal. */
export function isSettled(snapshot: Snapshot): boolean {
  return isTerminal(snapshot.status);
}

export function describeTarget(target: Target | { readonly id: string }): string {
  if (typeof target === 'string') return target;
  return 'key' in target ? `with key ${target.key}` : target.id;
}

export function toSnapshot(row: InstanceRow): Snapshot {
  return {
    id: row.id,
    machine: row.fsm,
    version: row.version,
    status: row.status as Status,
    step: row.step,
    state: row.state,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    queue: row.queue,
    priority: row.priority,
    eligibleAt: row.eligible_at,
    result: row.result,
    error: row.last_error,
    errors: row.errors,
    correlationKey: row.correlation_key,
    concurrencyKey: row.concurrency_key,
    rateLimit:
      row.rate_limit === null
        ? null
        : row.rate_partition === null
          ? row.rate_limit
          : [row.rate_limit, row.rate_partition],
    weight: row.weight,
    parentId: row.parent_id,
    lockedBy: row.locked_by,
    leaseExpiresAt: row.lease_expires_at,
    insertedAt: row.inserted_at,
    updatedAt: row.updated_at,
  };
}
