/**
 * Statements of the durable inbox: delivering signals, waking rows parked on them, and
 * firing await deadlines. How a wake-up is never lost is told in `migrations/004_actors.sql`.
 */
import { type Queryable, run, statement } from './db.js';
import { LIVE } from './settle.js';

export interface SignalRow {
  readonly targetId: string | null;
  readonly targetKey: string | null;
  readonly name: string;
  /** JSON text. */
  readonly payload: string;
  readonly dedupKey: string | null;
}

export interface DeliveredRow {
  /** The live instance the signal went to, or null: no such live instance (nothing stored). */
  readonly instance_id: string | null;
  readonly queue: string | null;
  /** The target is runnable after this statement: its queue must be woken. */
  readonly runnable: boolean;
  /** The stored signal's id: this one's, or the first one's for a redelivered dedup key. */
  readonly signal_id: string | null;
  readonly duplicate: boolean;
}

/**
 * Delivers any number of signals in one statement; one row per signal, in order.
 *
 * A `{ key }` target is the live instance occupying (or, with an empty scope, newest
 * carrying) the key. Every target's row is written (`inbox = true`, and `runnable` when it
 * awaits one of the new signals' names), so the statement takes the row's lock: a flush
 * parking the row either committed before (its park is seen and woken here) or waits for
 * this commit (and its re-check sees the signal; see `wakeParked`). A target that ended
 * meanwhile is re-read when its lock is granted, and gets nothing. A signal whose dedup key
 * is already in the target's inbox stores nothing and answers the first one's id.
 *
 * Signals are stored after their target row is locked, under pre-drawn ids, so each input
 * row learns its own id.
 */
export async function deliverSignals(
  db: Queryable,
  schema: string,
  signals: readonly SignalRow[],
): Promise<DeliveredRow[]> {
  const stmt = statement(
    schema,
    'deliver_signals',
    `WITH input AS MATERIALIZED (
       SELECT u.*, nextval(pg_get_serial_sequence(':schema.gen_durable_signals', 'id')) AS sid
       FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
            WITH ORDINALITY AS u(target_id, target_key, name, payload, dedup_key, ord)
     ), resolved AS MATERIALIZED (
       SELECT i.*, COALESCE(i.target_id, (
         SELECT g.id FROM :schema.gen_durable g
         WHERE g.correlation_key = i.target_key AND g.status IN ${LIVE}
         ORDER BY (g.status = ANY (g.correlation_scope)) DESC, g.id DESC LIMIT 1)) AS instance_id
       FROM input i
     ), existing AS MATERIALIZED (
       SELECT r.ord, s.id FROM resolved r
       JOIN :schema.gen_durable_signals s ON s.instance_id = r.instance_id AND s.dedup_key = r.dedup_key
     ), per_target AS (
       SELECT r.instance_id, array_agg(r.name) FILTER (WHERE e.id IS NULL) AS names
       FROM resolved r LEFT JOIN existing e ON e.ord = r.ord
       WHERE r.instance_id IS NOT NULL GROUP BY r.instance_id
     ), targets AS (
       UPDATE :schema.gen_durable AS t SET
         inbox = true,
         status = CASE WHEN t.status = 'awaiting_signal' AND t.awaiting && p.names THEN 'runnable' ELSE t.status END,
         eligible_at = CASE WHEN t.status = 'awaiting_signal' AND t.awaiting && p.names THEN now()
                            ELSE t.eligible_at END,
         -- Only a wake-up is a write GC cares about; keeping updated_at otherwise keeps the
         -- update HOT (no indexed column changes).
         updated_at = CASE WHEN t.status = 'awaiting_signal' AND t.awaiting && p.names THEN now()
                           ELSE t.updated_at END
       FROM per_target p
       WHERE t.id = p.instance_id AND t.status IN ${LIVE}
       RETURNING t.id, t.queue, t.status = 'runnable' AS runnable
     ), ins AS (
       INSERT INTO :schema.gen_durable_signals (id, instance_id, name, payload, dedup_key)
       SELECT r.sid, r.instance_id, r.name, r.payload::jsonb, r.dedup_key
       FROM resolved r JOIN targets ON targets.id = r.instance_id
       WHERE NOT EXISTS (SELECT 1 FROM existing e WHERE e.ord = r.ord)
       ORDER BY r.ord
       ON CONFLICT (instance_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
       RETURNING id
     )
     SELECT targets.id::text AS instance_id, targets.queue, COALESCE(targets.runnable, false) AS runnable,
            COALESCE(ins.id, e.id)::text AS signal_id, ins.id IS NULL AS duplicate
     FROM resolved r
     LEFT JOIN targets ON targets.id = r.instance_id
     LEFT JOIN ins ON ins.id = r.sid
     LEFT JOIN existing e ON e.ord = r.ord
     ORDER BY r.ord`,
    { prepared: false },
  );
  return run<DeliveredRow>(db, stmt, [
    signals.map((s) => s.targetId),
    signals.map((s) => s.targetKey),
    signals.map((s) => s.name),
    signals.map((s) => s.payload),
    signals.map((s) => s.dedupKey),
  ]);
}

/** The signal holding a dedup key in an instance's inbox (after a concurrent redelivery). */
export async function findSignalByDedup(
  db: Queryable,
  schema: string,
  instanceId: string,
  dedupKey: string,
): Promise<string | undefined> {
  const stmt = statement(
    schema,
    'signal_by_dedup',
    `SELECT id::text AS id FROM :schema.gen_durable_signals WHERE instance_id = $1 AND dedup_key = $2`,
  );
  return (await run<{ id: string }>(db, stmt, [instanceId, dedupKey]))[0]?.id;
}

/**
 * The re-check of a park: rows just parked (`awaiting_signal`, in this transaction, after
 * the flush locked them) whose inbox already holds a signal they await and have not seen
 * become runnable. Run in the flush's transaction after the outcome update, so its snapshot
 * includes every signal whose statement held the row's lock before the flush took it.
 */
export async function wakeParked(
  db: Queryable,
  schema: string,
  ids: readonly string[],
): Promise<Array<{ id: string; queue: string }>> {
  const stmt = statement(
    schema,
    'wake_parked',
    `UPDATE :schema.gen_durable AS t SET status = 'runnable', eligible_at = now(), updated_at = now()
     WHERE t.id = ANY ($1::bigint[]) AND t.status = 'awaiting_signal'
       AND EXISTS (SELECT 1 FROM :schema.gen_durable_signals s
                   WHERE s.instance_id = t.id AND s.name = ANY (t.awaiting)
                     AND s.id <> ALL (COALESCE(t.seen_signals, '{}')))
     RETURNING t.id::text AS id, t.queue`,
    { prepared: false },
  );
  return run(db, stmt, [ids]);
}

/**
 * Wakes up to `limit` awaiting rows whose deadline passed (`timed_out`, attempt untouched),
 * earliest first. Rows another transaction holds (a signal waking them) are skipped.
 * Plan: a range scan of `gen_durable_await_deadlines` up to now, stopped by the limit.
 */
export async function fireAwaitTimeouts(
  db: Queryable,
  schema: string,
  limit: number,
): Promise<Array<{ id: string; queue: string; step: string }>> {
  const stmt = statement(
    schema,
    'fire_timeouts',
    `WITH due AS (
       SELECT id FROM :schema.gen_durable
       WHERE status = 'awaiting_signal' AND eligible_at <= now()
       ORDER BY eligible_at LIMIT $1
       FOR NO KEY UPDATE SKIP LOCKED
     )
     UPDATE :schema.gen_durable AS t SET status = 'runnable', timed_out = true, eligible_at = now(), updated_at = now()
     FROM due WHERE t.id = due.id AND t.status = 'awaiting_signal'
     RETURNING t.id::text AS id, t.queue, t.step`,
  );
  return run(db, stmt, [limit]);
}

/** Milliseconds until the earliest await deadline (null when no await has one). One index probe. */
export async function nextAwaitDeadline(db: Queryable, schema: string): Promise<number | null> {
  const stmt = statement(
    schema,
    'next_deadline',
    `SELECT ceil(extract(epoch FROM min(eligible_at) - now()) * 1000)::float8 AS ms
     FROM :schema.gen_durable WHERE status = 'awaiting_signal' AND eligible_at < 'infinity'`,
  );
  return (await run<{ ms: number | null }>(db, stmt, []))[0]?.ms ?? null;
}
