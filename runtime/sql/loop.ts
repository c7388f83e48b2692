/**
 * The engine loop's statements besides the pick (`claim.ts`): extending leases, releasing
 * claims, and reaping expired leases and dead nodes' claims. Committing outcomes is `flush.ts`.
 */
import { leaderLockRows, lockParts } from './leader.js';
import { settleCtes } from './settle.js';
import { type Queryable, run, statement } from './db.js';

/**
 * `t.errors` with one more entry, keeping the latest 10: the row's current step and attempt,
 * the time, and the error given by the SQL expression `error`, a jsonb object
 * `{ error, name?, code?, stack? }` (`error` is the message; bounded in size by whoever built
 * it, see `errorRecord` in the flusher), merged in as it is (evaluated once).
 */
export function appendError(error: string): string {
  return `(SELECT jsonb_agg(e ORDER BY n) FROM (
    SELECT e, n FROM jsonb_array_elements(t.errors || jsonb_build_array(
      jsonb_build_object('step', t.step, 'attempt', t.attempt, 'at', now()) || ${error})) WITH ORDINALITY AS a(e, n)
    ORDER BY n DESC LIMIT 10) latest)`;
}

/**
 * The node heartbeat: marks the node alive and extends the leases of the claims it still
 * runs (`ids`: the steps in flight on this node, running or waiting to be committed), in one
 * statement. A claim the node no longer runs keeps its expiry and is reaped.
 *
 * Rows another transaction has locked (the node's own flush committing them right now) are
 * skipped, not waited for: the flush and the heartbeat lock the same rows and, waiting on
 * each other in different orders, deadlocked. A skipped row is about to be committed, or is
 * extended by the next beat (the lease is at least twice the heartbeat interval). Found by
 * primary key, never through `gen_durable_leases` (see `flushOutcomes` for the trap).
 *
 * `alive` is false when the node's row is gone (it was declared dead). `leaderPid` is the
 * backend holding the install's leader lock (`leaderKey`), or null when nobody leads: the
 * elector reads it to notice a lost lock or a vacant one without statements of its own.
 */
export async function heartbeat(
  db: Queryable,
  schema: string,
  beat: { nodeId: string; leaseMs: number; ids: readonly string[]; leaderKey: bigint | undefined },
): Promise<{ alive: boolean; extended: number; leaderPid: number | null }> {
  const stmt = statement(
    schema,
    'heartbeat',
    `WITH node AS (
       UPDATE :schema.gen_durable_nodes SET heartbeat_at = now() WHERE id = $1 RETURNING id
     ), live AS (
       SELECT id FROM :schema.gen_durable
       WHERE id = ANY ($3::bigint[])
         AND status IS NOT DISTINCT FROM 'executing' AND locked_by IS NOT DISTINCT FROM $1::text
       FOR NO KEY UPDATE SKIP LOCKED
     ), leases AS (
       UPDATE :schema.gen_durable AS t SET lease_expires_at = now() + $2 * interval '1 millisecond'
       FROM live WHERE t.id = live.id RETURNING t.id
     )
     SELECT EXISTS (SELECT 1 FROM node) AS alive, (SELECT count(*) FROM leases)::int AS extended,
       (SELECT min(pid) ${leaderLockRows(4, 5)}) AS "leaderPid"`,
    { prepared: false },
  );
  const [classid, objid] = beat.leaderKey === undefined ? [null, null] : lockParts(beat.leaderKey);
  const row = (
    await run<{ alive: boolean; extended: number; leaderPid: number | null }>(db, stmt, [
      beat.nodeId,
      beat.leaseMs,
      beat.ids,
      classid,
      objid,
    ])
  )[0];
  return row ?? { alive: false, extended: 0, leaderPid: null };
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

/** A claim whose node is gone or hung, as found by the reaper. */
export interface AbandonedClaim {
  readonly id: string;
  readonly claim: string;
  readonly fsm: string;
  readonly version: number;
  readonly attempt: number;
  readonly max_attempts: number;
}

const ABANDONED_COLUMNS = `t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.attempt, t.max_attempts`;

/** Up to `limit` claims whose lease expired (their node died or hung), oldest first. */
export async function findExpiredLeases(
  db: Queryable,
  schema: string,
  limit: number,
): Promise<AbandonedClaim[]> {
  const stmt = statement(
    schema,
    'find_expired',
    `SELECT ${ABANDONED_COLUMNS} FROM :schema.gen_durable t
     WHERE status = 'executing' AND lease_expires_at < now()
     ORDER BY lease_expires_at LIMIT $1`,
  );
  return run(db, stmt, [limit]);
}

/**
 * Up to `limit` claims of dead nodes, whatever their leases say: rows `executing` under a node
 * whose heartbeat is older than `deadMs`, or under a node that has no row at all (pruned, or
 * never registered) if claimed more than `deadMs` ago — a node registers before it claims
 * and re-registers at its next heartbeat when pruned, so a young claim without a node row
 * may belong to a live node about to re-register. Heartbeats and claims are stamped with the
 * database's clock, so no node's clock matters.
 *
 * The same statement prunes the dead nodes' rows (a data-modifying CTE: the claims are read
 * from the snapshot before the delete, so a dead node's claims are found this round and, by
 * their age, in later ones). A node that was only frozen registers again at its next
 * heartbeat.
 *
 * Plan: reads the executing rows (`gen_durable_leases` or a scan of them; bounded by the
 * cluster's concurrency, never by the table) with one primary-key probe of
 * `gen_durable_nodes` each; run once per reaper round.
 */
export async function findDeadNodeClaims(
  db: Queryable,
  schema: string,
  deadMs: number,
  limit: number,
): Promise<Array<AbandonedClaim & { node: string | null }>> {
  const stmt = statement(
    schema,
    'find_dead_node_claims',
    `WITH pruned AS (
       DELETE FROM :schema.gen_durable_nodes WHERE heartbeat_at < now() - $1 * interval '1 millisecond'
     )
     SELECT ${ABANDONED_COLUMNS}, t.locked_by AS node FROM :schema.gen_durable t
     LEFT JOIN :schema.gen_durable_nodes n ON n.id = t.locked_by
     WHERE t.status = 'executing'
       AND CASE WHEN n.id IS NULL THEN t.updated_at < now() - $1 * interval '1 millisecond'
                ELSE n.heartbeat_at < now() - $1 * interval '1 millisecond' END
     ORDER BY t.id LIMIT $2`,
    { prepared: false },
  );
  return run(db, stmt, [deadMs, limit]);
}

/**
 * Every claim held under `nodeId`, lease or not: a node that starts reaps them, since a node
 * that reuses the id of one that died would otherwise keep that one's claims alive without
 * ever running them.
 */
export async function findNodeClaims(
  db: Queryable,
  schema: string,
  nodeId: string,
): Promise<AbandonedClaim[]> {
  const stmt = statement(
    schema,
    'find_node_claims',
    `SELECT ${ABANDONED_COLUMNS} FROM :schema.gen_durable t WHERE locked_by = $1 AND status = 'executing'`,
  );
  return run(db, stmt, [nodeId]);
}

/**
 * What happens to abandoned claims: back to runnable with `attempt + 1`, eligible after the
 * machine's backoff (`delays`, ms), or to `failed` when that was the last attempt, so a step
 * that keeps killing its node cannot loop forever. Each row is guarded by the claim it was
 * found with (a claim committed or released meanwhile is left alone) and, for `expired`, by
 * its lease still being expired (a heartbeat that came in between wins). Locked rows are
 * skipped (a flush is committing them), so it never waits and can run on two nodes at once.
 * `reason` goes to the error history.
 */
export async function abandonClaims(
  db: Queryable,
  schema: string,
  claims: ReadonlyArray<{ id: string; claim: string; delayMs: number }>,
  reason: string,
  expired: boolean,
): Promise<
  Array<{ id: string; queue: string; status: string; attempt: number; eligibleIn: number; joined: boolean }>
> {
  const stmt = statement(
    schema,
    'abandon',
    `WITH c AS (
       SELECT t.id, o.delay_ms FROM :schema.gen_durable t
       JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS o(id, claim, delay_ms) ON t.id = o.id
       WHERE t.id = ANY ($1::bigint[]) AND t.claim = o.claim
         AND CASE WHEN t.status = 'executing' THEN true ELSE false END
         AND (NOT $5::boolean OR t.lease_expires_at < now())
       ORDER BY t.id
       FOR NO KEY UPDATE OF t SKIP LOCKED
     ), upd AS (
       UPDATE :schema.gen_durable AS t SET
         status = CAST(CASE WHEN t.attempt + 1 < t.max_attempts THEN 'runnable' ELSE 'failed' END
                       AS :schema.gen_durable_status),
         attempt = t.attempt + 1,
         last_error = format('%s: node %s, step %s', $4::text, t.locked_by, t.step),
         errors = ${appendError("jsonb_build_object('error', $4::text || ' on node ' || t.locked_by, 'name', 'AbandonedClaim')")},
         eligible_at = now() + c.delay_ms * interval '1 millisecond',
         locked_by = NULL, lease_expires_at = NULL, updated_at = now()
       FROM c WHERE t.id = c.id
       RETURNING t.id, t.queue, t.status::text AS status, t.attempt, c.delay_ms, t.inbox, t.parent_id
     ), ${settleCtes('upd')}
     SELECT id::text AS id, queue, status, attempt, delay_ms::float8 AS "eligibleIn", false AS joined FROM upd
     UNION ALL
     SELECT id::text, queue, status, 0, 0, true FROM settle_joined WHERE status = 'runnable'`,
    { prepared: false },
  );
  return run(db, stmt, [
    claims.map((c) => c.id),
    claims.map((c) => c.claim),
    claims.map((c) => Math.round(c.delayMs)),
    reason,
    expired,
  ]);
}
