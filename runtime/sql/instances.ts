/**
 * Statements of the client API: inserting, reading, cancelling and counting instances.
 */
import { type Queryable, run, statement } from './db.js';
import { LIVE, lockRowsCte, settleCtes } from './settle.js';

export interface InsertRow {
  readonly fsm: string;
  readonly version: number;
  readonly step: string;
  /** State as JSON text. */
  readonly state: string;
  readonly queue: string;
  readonly priority: number;
  readonly delayMs: number;
  readonly runAt: Date | null;
  readonly correlationKey: string | null;
  /** Postgres array literal of statuses, e.g. `{runnable,executing}`. */
  readonly correlationScope: string;
  readonly concurrencyKey: string | null;
  /** The first step's rate limit, its partition and weight. */
  readonly rateLimit: string | null;
  readonly ratePartition: string | null;
  readonly weight: number;
  readonly maxAttempts: number;
}

export interface InsertedRow {
  readonly id: string;
  readonly inserted: boolean;
  readonly correlation_key: string | null;
}

/**
 * Inserts any number of rows in one statement (one array parameter per column). Ids are
 * drawn up front so each input row learns whether it was inserted; rows are inserted in
 * correlation-key order so concurrent batches sharing keys wait on each other in one order
 * and never deadlock. A row whose key is occupied is skipped (`inserted = false`).
 */
export async function insertInstances(
  db: Queryable,
  schema: string,
  rows: readonly InsertRow[],
  /** Per row, the parent instance (a spawned child), or null. */
  parentIds: ReadonlyArray<string | null> | null = null,
): Promise<InsertedRow[]> {
  const stmt = statement(
    schema,
    'insert',
    `WITH input AS MATERIALIZED (
       SELECT u.*, nextval(pg_get_serial_sequence(':schema.gen_durable', 'id')) AS new_id
       FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::bigint[],
                   $8::timestamptz[], $9::text[], $10::text[], $11::int[], $12::bigint[], $13::text[],
                   $14::text[], $15::text[], $16::int[])
            WITH ORDINALITY AS u(fsm, version, step, state, queue, priority, delay_ms, run_at,
                                 correlation_key, correlation_scope, max_attempts, parent_id, concurrency_key,
                                 rate_limit, rate_partition, weight, ord)
     ),
     ins AS (
       INSERT INTO :schema.gen_durable AS t
         (id, fsm, version, step, state, queue, priority, eligible_at, correlation_key, correlation_scope, max_attempts,
          parent_id, concurrency_key, rate_limit, rate_partition, weight)
       SELECT new_id, fsm, version, step, state::jsonb, queue, priority,
              COALESCE(run_at, now() + delay_ms * interval '1 millisecond'),
              -- A row without a key occupies no key: it stores no scope (migration 009).
              correlation_key, CASE WHEN correlation_key IS NOT NULL THEN CAST(correlation_scope AS :schema.gen_durable_status[]) END,
              max_attempts, parent_id, concurrency_key,
              rate_limit, rate_partition, weight
       FROM input
       ORDER BY correlation_key NULLS LAST, ord
       ON CONFLICT (correlation_key) WHERE correlation_key IS NOT NULL AND status = ANY (correlation_scope)
       DO NOTHING
       RETURNING t.id
     )
     SELECT input.new_id::text AS id, ins.id IS NOT NULL AS inserted, input.correlation_key
     FROM input LEFT JOIN ins ON ins.id = input.new_id
     ORDER BY input.ord`,
  );
  return run<InsertedRow>(db, stmt, [
    rows.map((r) => r.fsm),
    rows.map((r) => r.version),
    rows.map((r) => r.step),
    rows.map((r) => r.state),
    rows.map((r) => r.queue),
    rows.map((r) => r.priority),
    rows.map((r) => r.delayMs),
    rows.map((r) => r.runAt),
    rows.map((r) => r.correlationKey),
    rows.map((r) => r.correlationScope),
    rows.map((r) => r.maxAttempts),
    parentIds ?? rows.map(() => null),
    rows.map((r) => r.concurrencyKey),
    rows.map((r) => r.rateLimit),
    rows.map((r) => r.ratePartition),
    rows.map((r) => r.weight),
  ]);
}

/** The rows currently occupying these correlation keys. */
export async function findOccupiedKeys(
  db: Queryable,
  schema: string,
  keys: readonly string[],
): Promise<Array<{ id: string; correlation_key: string }>> {
  const stmt = statement(
    schema,
    'occupied_keys',
    `SELECT id::text AS id, correlation_key FROM :schema.gen_durable
     WHERE correlation_key = ANY ($1::text[]) AND status = ANY (correlation_scope)`,
  );
  return run(db, stmt, [keys]);
}

export interface InstanceRow {
  id: string;
  fsm: string;
  version: number;
  step: string;
  state: unknown;
  status: string;
  attempt: number;
  max_attempts: number;
  queue: string;
  priority: number;
  eligible_at: Date;
  locked_by: string | null;
  lease_expires_at: Date | null;
  correlation_key: string | null;
  concurrency_key: string | null;
  rate_limit: string | null;
  rate_partition: string | null;
  weight: number;
  parent_id: string | null;
  result: unknown;
  last_error: string | null;
  errors: unknown[];
  inserted_at: Date;
  updated_at: Date;
}

const INSTANCE_COLUMNS = `id::text AS id, fsm, version, step, state, status::text AS status, attempt, max_attempts,
  queue, priority, eligible_at, locked_by, lease_expires_at, correlation_key, concurrency_key, rate_limit, rate_partition, weight,
  parent_id::text AS parent_id, result, last_error, errors, inserted_at, updated_at`;

export async function getInstanceById(
  db: Queryable,
  schema: string,
  id: string,
): Promise<InstanceRow | undefined> {
  const stmt = statement(
    schema,
    'get_by_id',
    `SELECT ${INSTANCE_COLUMNS} FROM :schema.gen_durable WHERE id = $1`,
  );
  return (await run<InstanceRow>(db, stmt, [id]))[0];
}

/** The instance a key addresses: the one occupying it, else the newest row carrying it. */
export async function getInstanceByKey(
  db: Queryable,
  schema: string,
  key: string,
): Promise<InstanceRow | undefined> {
  const stmt = statement(
    schema,
    'get_by_key',
    `SELECT ${INSTANCE_COLUMNS} FROM :schema.gen_durable
     WHERE correlation_key = $1
     ORDER BY (status = ANY (correlation_scope)) DESC, id DESC
     LIMIT 1`,
  );
  return (await run<InstanceRow>(db, stmt, [key]))[0];
}

/**
 * Ends a live instance as `cancelled`, with the settle path (its inbox cleared, its parent's
 * barrier counted down; the parent is locked first, in id order, see `settle.ts`). Returns
 * whether it was live and the parent it made runnable, if any.
 */
export async function cancelInstance(
  db: Queryable,
  schema: string,
  id: string,
): Promise<{ cancelled: boolean; joined: Array<{ id: string; queue: string }> }> {
  const stmt = statement(
    schema,
    'cancel',
    `WITH lock_ids AS (
       SELECT ARRAY(SELECT x FROM (SELECT $1::bigint AS x UNION SELECT parent_id FROM :schema.gen_durable WHERE id = $1) u
                    WHERE x IS NOT NULL) AS ids
     ), ${lockRowsCte('(SELECT ids FROM lock_ids)::bigint[]')}, upd AS (
       UPDATE :schema.gen_durable AS t
       SET status = 'cancelled', locked_by = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE (SELECT count(*) FROM locked) >= 0 AND t.id = $1 AND t.status IN ${LIVE}
       RETURNING t.id, t.status::text AS status, t.inbox, t.parent_id
     ), ${settleCtes('upd')}
     SELECT id::text AS id, NULL::text AS queue, 'cancelled' AS kind FROM upd
     UNION ALL SELECT id::text, queue, 'joined' FROM settle_joined WHERE status = 'runnable'`,
  );
  const rows = await run<{ id: string; queue: string | null; kind: string }>(db, stmt, [id]);
  return {
    cancelled: rows.some((r) => r.kind === 'cancelled'),
    joined: rows.flatMap((r) =>
      r.kind === 'joined' && r.queue !== null ? [{ id: r.id, queue: r.queue }] : [],
    ),
  };
}

export interface CountRow {
  queue: string;
  fsm: string;
  status: string;
  count: number;
}

/** Counts by queue, machine and status, optionally filtered by any of them. */
export async function countInstances(
  db: Queryable,
  schema: string,
  filter: { queue: string | null; fsm: string | null; status: string | null },
): Promise<CountRow[]> {
  const stmt = statement(
    schema,
    'count',
    `SELECT queue, fsm, status::text AS status, count(*)::int AS count FROM :schema.gen_durable
     WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR fsm = $2)
       AND ($3::text IS NULL OR status::text = $3)
     GROUP BY queue, fsm, status ORDER BY queue, fsm, status`,
  );
  return run<CountRow>(db, stmt, [filter.queue, filter.fsm, filter.status]);
}

/** Lists instances by id (keyset pagination with `afterId`), optionally filtered. */
export async function listInstances(
  db: Queryable,
  schema: string,
  filter: {
    queue: string | null;
    fsm: string | null;
    status: string | null;
    afterId: string | null;
    limit: number;
  },
): Promise<InstanceRow[]> {
  const stmt = statement(
    schema,
    'list',
    `SELECT ${INSTANCE_COLUMNS} FROM :schema.gen_durable
     WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR fsm = $2)
       AND ($3::text IS NULL OR status::text = $3) AND ($4::bigint IS NULL OR id > $4)
     ORDER BY id LIMIT $5`,
  );
  return run<InstanceRow>(db, stmt, [filter.queue, filter.fsm, filter.status, filter.afterId, filter.limit]);
}

/**
 * Marks a live instance as waited for, so that whoever settles it notifies. Writing the row
 * itself (not a side table) serialises with the commit of its outcome, so the notification
 * cannot be missed. Returns the row's queue when it was runnable: the write may have hidden
 * it from a concurrent pick (SKIP LOCKED), so the caller must wake that queue.
 */
export async function watchInstance(
  db: Queryable,
  schema: string,
  id: string,
): Promise<{ runnableIn: string | null }> {
  const stmt = statement(
    schema,
    'watch',
    `UPDATE :schema.gen_durable SET watched = true
     WHERE id = $1 AND NOT watched AND status IN ${LIVE}
     RETURNING queue, status = 'runnable' AS runnable`,
  );
  const row = (await run<{ queue: string; runnable: boolean }>(db, stmt, [id]))[0];
  return { runnableIn: row?.runnable ? row.queue : null };
}
