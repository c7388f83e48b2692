/**
 * The engine loop's statements: claiming a batch, committing a batch of outcomes, extending
 * leases, releasing claims, and reaping expired leases.
 */
import { type Queryable, run, statement } from './db.js';

export interface ClaimedRow {
  id: string;
  claim: string;
  fsm: string;
  version: number;
  step: string;
  /** JSON text: the main thread hands it to a worker without parsing it. */
  state: string;
  attempt: number;
  max_attempts: number;
  correlation_key: string | null;
}

/**
 * `t.errors` with one more entry (the row's current step and attempt, the error text given
 * by the SQL expression `error`, the time), keeping the latest 10.
 */
function appendError(error: string): string {
  return `(SELECT jsonb_agg(e ORDER BY n) FROM (
    SELECT e, n FROM jsonb_array_elements(t.errors || jsonb_build_array(jsonb_build_object(
      'step', t.step, 'attempt', t.attempt, 'error', ${error}, 'at', now()))) WITH ORDINALITY AS a(e, n)
    ORDER BY n DESC LIMIT 10) latest)`;
}

/**
 * `prio(p)`: the distinct priorities of a queue's runnable rows (queue `$1`), in order, one
 * index probe each (a loose index scan of `gen_durable_pick`). Evaluated lazily: a consumer
 * that stops early stops the walk.
 */
const PRIORITY_WALK = `WITH RECURSIVE prio(p) AS (
       (SELECT priority FROM :schema.gen_durable
        WHERE queue = $1 AND status = 'runnable' ORDER BY priority LIMIT 1)
       UNION ALL
       SELECT (SELECT priority FROM :schema.gen_durable
               WHERE queue = $1 AND status = 'runnable' AND priority > prio.p ORDER BY priority LIMIT 1)
       FROM prio WHERE prio.p IS NOT NULL
     )`;

export const CLAIM_BATCH_SQL = `${PRIORITY_WALK},
     picked AS (
       SELECT c.id FROM prio CROSS JOIN LATERAL (
         SELECT id FROM :schema.gen_durable
         WHERE queue = $1 AND status = 'runnable' AND priority = prio.p AND eligible_at <= now()
         ORDER BY eligible_at, id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED
       ) c
       WHERE prio.p IS NOT NULL
       LIMIT $2
     )
     UPDATE :schema.gen_durable AS t
     SET status = 'executing', locked_by = $3, claim = t.claim + 1,
         lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now()
     FROM picked WHERE t.id = picked.id
     RETURNING t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.step, t.state::text AS state,
               t.attempt, t.max_attempts, t.correlation_key`;

/**
 * Claims up to `limit` due runnable rows of one queue, in `(priority, eligible_at, id)` order,
 * flipping them to `executing` under a lease owned by `nodeId`.
 *
 * Plan: `prio` walks the distinct priorities of the queue's runnable rows with one index probe
 * each (a loose index scan); for each priority the lateral subquery range-scans
 * `gen_durable_pick` on `(queue, priority, eligible_at <= now())` in index order, so it stops
 * at the first future row and never sorts. The outer LIMIT stops the walk as soon as the batch
 * is full, so the cost grows with the batch (and the number of distinct priorities passed),
 * never with finished, parked or future-scheduled rows. Rows locked by another picker are
 * skipped, never waited on.
 */
export async function claimBatch(
  db: Queryable,
  schema: string,
  args: { queue: string; limit: number; nodeId: string; leaseMs: number },
): Promise<ClaimedRow[]> {
  const stmt = statement(schema, 'claim', CLAIM_BATCH_SQL);
  return run<ClaimedRow>(db, stmt, [args.queue, args.limit, args.nodeId, args.leaseMs]);
}

/**
 * Milliseconds until the queue's next runnable row falls due (null when none is scheduled).
 * The same walk as the claim: one probe per distinct priority, no scan of the rows.
 */
export async function nextDueIn(db: Queryable, schema: string, queue: string): Promise<number | null> {
  const stmt = statement(
    schema,
    'next_due',
    `${PRIORITY_WALK}
     SELECT ceil(greatest(0, extract(epoch FROM min(n.eligible_at) - now()) * 1000))::float8 AS ms
     FROM prio CROSS JOIN LATERAL (
       SELECT eligible_at FROM :schema.gen_durable
       WHERE queue = $1 AND status = 'runnable' AND priority = prio.p AND eligible_at > now()
       ORDER BY eligible_at LIMIT 1
     ) n
     WHERE prio.p IS NOT NULL`,
  );
  const row = (await run<{ ms: number | null }>(db, stmt, [queue]))[0];
  return row?.ms ?? null;
}

/** How an outcome changes `attempt`. */
export const ATTEMPT = { reset: 0, increment: 1, keep: 2 } as const;

export interface OutcomeRow {
  readonly id: string;
  readonly claim: string;
  readonly status: 'runnable' | 'done' | 'failed';
  /** New step, or null to keep it. */
  readonly step: string | null;
  /** New state as JSON text, or null to keep it. */
  readonly state: string | null;
  readonly attempt: (typeof ATTEMPT)[keyof typeof ATTEMPT];
  /** Eligible this many ms from now, or null to keep `eligible_at`. */
  readonly delayMs: number | null;
  /** Result as JSON text (terminal `done`), else null. */
  readonly result: string | null;
  /** Replaces `last_error` when not null. */
  readonly lastError: string | null;
  /** Appended to the error history (with the step and attempt it happened at) when not null. */
  readonly error: string | null;
}

/**
 * Commits a batch of outcomes in one statement. Each row is guarded by its claim: the owning
 * node, the claim token and `executing` must all still hold, so an outcome whose lease was
 * reaped (and maybe re-claimed) commits nothing. Returns the ids that were applied.
 *
 * Planner trap: as a prepared statement, Postgres soon switches to a generic plan that
 * guesses 10 rows for `unnest` of a parameter array and ~1 row for this node's executing
 * rows, and picks a nested loop that rescans the arrays once per executing row — work that
 * grows with in-flight rows × batch size (measured: 6-70 ms per flush). Planned with the
 * actual arrays it drives the update from the arrays by primary key (or a hash join) and
 * grows with the batch only. So this statement is deliberately not prepared.
 */
export async function flushOutcomes(
  db: Queryable,
  schema: string,
  nodeId: string,
  rows: readonly OutcomeRow[],
): Promise<Array<{ id: string; watched: boolean }>> {
  const stmt = statement(
    schema,
    'flush',
    `UPDATE :schema.gen_durable AS t SET
       status = CAST(o.status AS :schema.gen_durable_status),
       step = COALESCE(o.step, t.step),
       state = COALESCE(o.state::jsonb, t.state),
       attempt = CASE o.attempt_op WHEN 0 THEN 0 WHEN 1 THEN t.attempt + 1 ELSE t.attempt END,
       eligible_at = CASE WHEN o.delay_ms IS NULL THEN t.eligible_at
                          ELSE now() + o.delay_ms * interval '1 millisecond' END,
       result = o.result::jsonb,
       last_error = COALESCE(o.last_error, t.last_error),
       errors = CASE WHEN o.error IS NULL THEN t.errors ELSE ${appendError('o.error')} END,
       locked_by = NULL, lease_expires_at = NULL, updated_at = now()
     FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[], $8::bigint[],
                 $9::text[], $10::text[], $11::text[])
          AS o(id, claim, status, step, state, attempt_op, delay_ms, result, last_error, error)
     WHERE t.id = o.id AND t.claim = o.claim AND t.locked_by = $1 AND t.status = 'executing'
     RETURNING t.id::text AS id, t.watched`,
    { prepared: false },
  );
  return run<{ id: string; watched: boolean }>(db, stmt, [
    nodeId,
    rows.map((r) => r.id),
    rows.map((r) => r.claim),
    rows.map((r) => r.status),
    rows.map((r) => r.step),
    rows.map((r) => r.state),
    rows.map((r) => r.attempt),
    rows.map((r) => r.delayMs),
    rows.map((r) => r.result),
    rows.map((r) => r.lastError),
    rows.map((r) => r.error),
  ]);
}

/**
 * The node heartbeat: marks the node alive and extends every lease it holds, in one
 * statement. `alive` is false when the node's row is gone (it was declared dead).
 */
export async function heartbeat(
  db: Queryable,
  schema: string,
  nodeId: string,
  leaseMs: number,
): Promise<{ alive: boolean; extended: number }> {
  const stmt = statement(
    schema,
    'heartbeat',
    `WITH node AS (
       UPDATE :schema.gen_durable_nodes SET heartbeat_at = now() WHERE id = $1 RETURNING id
     ), leases AS (
       UPDATE :schema.gen_durable SET lease_expires_at = now() + $2 * interval '1 millisecond'
       WHERE locked_by = $1 AND status = 'executing' RETURNING id
     )
     SELECT EXISTS (SELECT 1 FROM node) AS alive, (SELECT count(*) FROM leases)::int AS extended`,
  );
  const row = (await run<{ alive: boolean; extended: number }>(db, stmt, [nodeId, leaseMs]))[0];
  return row ?? { alive: false, extended: 0 };
}

/**
 * Gives claims back: the rows become runnable again at the same step with the same attempt
 * (no attempt is charged). `ids` null releases every claim the node holds.
 */
export async function releaseClaims(
  db: Queryable,
  schema: string,
  nodeId: string,
  ids: readonly string[] | null,
): Promise<Array<{ id: string; queue: string }>> {
  const stmt = statement(
    schema,
    'release',
    `UPDATE :schema.gen_durable
     SET status = 'runnable', locked_by = NULL, lease_expires_at = NULL, updated_at = now()
     WHERE locked_by = $1 AND status = 'executing' AND ($2::bigint[] IS NULL OR id = ANY ($2::bigint[]))
     RETURNING id::text AS id, queue`,
  );
  return run(db, stmt, [nodeId, ids]);
}

/**
 * What happens to a claim whose node is gone: back to runnable with `attempt + 1`, or to
 * `failed` when that was the last attempt, so a step that keeps killing its node cannot
 * loop forever. `$2` says why, for the error history.
 */
const ABANDON_CLAIM = `
  status = CAST(CASE WHEN t.attempt + 1 < t.max_attempts THEN 'runnable' ELSE 'failed' END
                AS :schema.gen_durable_status),
  attempt = t.attempt + 1,
  last_error = format('%s: node %s, step %s', $2::text, t.locked_by, t.step),
  errors = ${appendError("$2::text || ' on node ' || t.locked_by")},
  eligible_at = now(), locked_by = NULL, lease_expires_at = NULL, updated_at = now()`;

/** Reaps up to `limit` rows whose lease expired (their node died or hung). */
export async function reapExpiredLeases(
  db: Queryable,
  schema: string,
  limit: number,
): Promise<Array<{ id: string; queue: string; status: string }>> {
  const stmt = statement(
    schema,
    'reap',
    `WITH expired AS (
       SELECT id FROM :schema.gen_durable
       WHERE status = 'executing' AND lease_expires_at < now()
       ORDER BY lease_expires_at LIMIT $1
       FOR UPDATE SKIP LOCKED
     )
     UPDATE :schema.gen_durable AS t SET ${ABANDON_CLAIM}
     FROM expired WHERE t.id = expired.id
     RETURNING t.id::text AS id, t.queue, t.status::text AS status`,
  );
  return run(db, stmt, [limit, 'lease expired']);
}

/**
 * Reaps every claim held under `nodeId` at once, lease or not: run by a node as it starts,
 * since a node that reuses the id of one that died would otherwise keep that one's claims
 * alive with its own heartbeats without ever running them.
 */
export async function reapNodeClaims(
  db: Queryable,
  schema: string,
  nodeId: string,
): Promise<Array<{ id: string; queue: string; status: string }>> {
  const stmt = statement(
    schema,
    'reap_node',
    `UPDATE :schema.gen_durable AS t SET ${ABANDON_CLAIM}
     WHERE t.locked_by = $1 AND t.status = 'executing'
     RETURNING t.id::text AS id, t.queue, t.status::text AS status`,
  );
  return run(db, stmt, [nodeId, 'claim abandoned by an earlier process with the same node id']);
}
