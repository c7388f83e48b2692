/**
 * The engine loop's statements: claiming a batch, extending leases, releasing claims, and
 * reaping expired leases and dead nodes' claims. Committing outcomes is `flush.ts`.
 */
import { leaderLockRows, lockParts } from './leader.js';
import { settleCtes } from './settle.js';
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
  concurrency_key: string | null;
  parent_id: string | null;
  /** The names awaited when a signal or the deadline woke the row, else null. */
  awaiting: string[] | null;
  timed_out: boolean;
  /** A signal was ever stored for the row: its inbox is loaded (`loadActorState`). */
  has_inbox: boolean;
  /** The row joins a spawn: its children are loaded. */
  joined: boolean;
  /** The inbox as JSON text (null when empty or not loaded), set after the claim. */
  inbox?: string | null;
  /** The latest spawn's children as JSON text (null unless the row joins a spawn), set after the claim. */
  children?: string | null;
}

/**
 * What the claim returns of a row's actor state: flags only. The inbox and children of the
 * rows that have them are loaded by one more statement (`loadActorState`), so a batch of
 * plain jobs plans and runs no subquery for them.
 */
const CLAIM_EXTRAS = `t.parent_id::text AS parent_id, t.awaiting, t.timed_out,
    t.inbox AS has_inbox, t.children IS NOT NULL AS joined`;

/**
 * The inboxes (JSON text `[{ id, name, payload, insertedAt }]`, null when empty) and the
 * latest spawn's children (`[{ id, machine, status, state, result, error }]`) of claimed
 * rows, in one statement for the batch. Read after the claim: a signal that arrived since
 * is handed too (it is consumed only if it is in `ctx.awaited`, by id).
 */
export async function loadActorState(
  db: Queryable,
  schema: string,
  ids: readonly string[],
): Promise<Array<{ id: string; inbox: string | null; children: string | null }>> {
  const stmt = statement(
    schema,
    'actor_state',
    `SELECT t.id::text AS id,
       CASE WHEN t.inbox THEN (
         SELECT json_agg(json_build_object('id', s.id::text, 'name', s.name, 'payload', s.payload,
                                           'insertedAt', s.inserted_at) ORDER BY s.id)
         FROM :schema.gen_durable_signals s WHERE s.instance_id = t.id)::text END AS inbox,
       CASE WHEN t.children IS NOT NULL THEN COALESCE((
         SELECT json_agg(json_build_object('id', c.id::text, 'machine', c.fsm, 'status', c.status,
                                           'state', c.state, 'result', c.result, 'error', c.last_error) ORDER BY c.id)
         FROM :schema.gen_durable c WHERE c.id = ANY (t.children)), '[]')::text END AS children
     FROM :schema.gen_durable t WHERE t.id = ANY ($1::bigint[])`,
  );
  return run(db, stmt, [ids]);
}

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

/**
 * The claim of queues without concurrency keys: no key logic at all. A keyed row it meets
 * cannot be claimed by it — executing without a slot violates `gen_durable_concurrency_slot`
 * — so the statement fails, and the node switches that queue to `CLAIM_KEYED_SQL`.
 */
export const CLAIM_BATCH_SQL = `${PRIORITY_WALK},
     picked AS (
       SELECT c.id FROM prio CROSS JOIN LATERAL (
         SELECT id FROM :schema.gen_durable
         WHERE queue = $1 AND status = 'runnable' AND priority = prio.p AND eligible_at <= now()
           AND ($5::text[] IS NULL OR fsm || '@' || version = ANY ($5::text[]))
         ORDER BY eligible_at, id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED
       ) c
       WHERE prio.p IS NOT NULL
       LIMIT $2
     )
     UPDATE :schema.gen_durable AS t
     SET status = 'executing', locked_by = $3, claim = t.claim + 1, concurrency_slot = NULL,
         lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now()
     FROM picked WHERE t.id = picked.id
     RETURNING t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.step, t.state::text AS state,
               t.attempt, t.max_attempts, t.correlation_key, t.concurrency_key, ${CLAIM_EXTRAS}`;

/**
 * How many steps of a row's concurrency key may run at once: a configured gate's limit for
 * keys `<gate>:...` (`$6` gate names, `$7` limits), else 1.
 */
const KEY_LIMIT = (key: string) =>
  `COALESCE((SELECT g.l FROM unnest($6::text[], $7::int[]) AS g(p, l) WHERE g.p = split_part(${key}, ':', 1)), 1)`;

/**
 * The claim of queues whose rows may carry concurrency keys (see `claimBatch`). Costs about
 * 1 ms more per pick than the plain claim (planning its key subqueries and ranking).
 */
export const CLAIM_KEYED_SQL = `${PRIORITY_WALK},
     picked AS (
       SELECT c.id, c.concurrency_key, c.k, prio.p, c.eligible_at FROM prio CROSS JOIN LATERAL (
         SELECT x.id, x.concurrency_key, x.eligible_at,
                CASE WHEN x.concurrency_key IS NULL THEN NULL ELSE ${KEY_LIMIT('x.concurrency_key')} END AS k
         FROM :schema.gen_durable x
         WHERE x.queue = $1 AND x.status = 'runnable' AND x.priority = prio.p AND x.eligible_at <= now()
           AND ($5::text[] IS NULL OR x.fsm || '@' || x.version = ANY ($5::text[]))
           -- A key already running K steps is skipped: one probe of gen_durable_concurrency_active.
           AND CASE WHEN x.concurrency_key IS NULL THEN true
                    ELSE (SELECT count(*) FROM :schema.gen_durable e
                          WHERE e.concurrency_key = x.concurrency_key AND e.status = 'executing')
                         < ${KEY_LIMIT('x.concurrency_key')} END
         ORDER BY x.eligible_at, x.id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED
       ) c
       WHERE prio.p IS NOT NULL
       LIMIT $2
     ),
     -- Keyed rows: the r-th of its key in this batch takes the r-th free slot of the key, if
     -- there is one; the others stay runnable (their key frees when a step of it ends). Only
     -- keyed rows are ranked (sorted): a batch without keys sorts nothing.
     ranked AS (
       SELECT p.id, p.k,
              row_number() OVER (PARTITION BY p.concurrency_key ORDER BY p.p, p.eligible_at, p.id) AS r,
              (SELECT COALESCE(array_agg(e.concurrency_slot), '{}') FROM :schema.gen_durable e
               WHERE e.concurrency_key = p.concurrency_key AND e.status = 'executing') AS taken
       FROM picked p WHERE p.concurrency_key IS NOT NULL
     ),
     admitted AS (
       SELECT id, NULL::int AS slot FROM picked WHERE concurrency_key IS NULL
       UNION ALL
       SELECT id, (SELECT s FROM generate_series(0, k - 1) AS s WHERE s <> ALL (taken) ORDER BY s OFFSET r - 1 LIMIT 1)
       FROM ranked WHERE r <= k - cardinality(taken)
     )
     UPDATE :schema.gen_durable AS t
     SET status = 'executing', locked_by = $3, claim = t.claim + 1, concurrency_slot = admitted.slot,
         lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now()
     FROM admitted WHERE t.id = admitted.id
     RETURNING t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.step, t.state::text AS state,
               t.attempt, t.max_attempts, t.correlation_key, t.concurrency_key, ${CLAIM_EXTRAS}`;

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
 *
 * `machines` (`name@version`) limits the claim to rows this node can run, so that in a
 * rolling deploy an old node never claims (and fails) rows meant for a new version; null
 * claims any. The cost: due rows of machines the node does not know are read and skipped by
 * each of its picks (a filter on the index range), so a large backlog nobody here can run
 * slows this node's picks of that queue until a node that knows them drains it.
 */
export async function claimBatch(
  db: Queryable,
  schema: string,
  args: {
    queue: string;
    limit: number;
    nodeId: string;
    leaseMs: number;
    machines?: readonly string[] | null;
    /** Use the keyed claim (`CLAIM_KEYED_SQL`): the queue's rows may carry concurrency keys. */
    keyed?: boolean;
    /** Gates raising the concurrency of keys `<gate>:...`: gate name → limit (keyed claim). */
    gates?: Readonly<Record<string, number>>;
  },
): Promise<ClaimedRow[]> {
  // Not prepared: a generic plan cannot know `$1` is one queue of many nor how many rows
  // `$2` asks for, and was seen to seq-scan (34.9 ms against 1.2 ms custom-planned). Planned
  // with its values each time it costs a parse and a plan (~0.1 ms) per batch.
  const values: unknown[] = [args.queue, args.limit, args.nodeId, args.leaseMs, args.machines ?? null];
  if (!args.keyed)
    return run<ClaimedRow>(db, statement(schema, 'claim', CLAIM_BATCH_SQL, { prepared: false }), values);
  const stmt = statement(schema, 'claim_keyed', CLAIM_KEYED_SQL, { prepared: false });
  return run<ClaimedRow>(db, stmt, [
    ...values,
    Object.keys(args.gates ?? {}),
    Object.values(args.gates ?? {}),
  ]);
}

/**
 * Milliseconds until the queue's next runnable row falls due (null when none is scheduled).
 * The same walk as the claim: one probe per distinct priority, no scan of the rows; limited to
 * `machines` as the claim is. Not prepared, for the claim's reason.
 */
export async function nextDueIn(
  db: Queryable,
  schema: string,
  queue: string,
  machines: readonly string[] | null = null,
): Promise<number | null> {
  const stmt = statement(
    schema,
    'next_due',
    `${PRIORITY_WALK}
     SELECT ceil(extract(epoch FROM min(n.eligible_at) - now()) * 1000)::float8 AS ms
     FROM prio CROSS JOIN LATERAL (
       SELECT eligible_at FROM :schema.gen_durable
       WHERE queue = $1 AND status = 'runnable' AND priority = prio.p AND eligible_at > now()
         AND ($2::text[] IS NULL OR fsm || '@' || version = ANY ($2::text[]))
       ORDER BY eligible_at LIMIT 1
     ) n
     WHERE prio.p IS NOT NULL`,
    { prepared: false },
  );
  const row = (await run<{ ms: number | null }>(db, stmt, [queue, machines]))[0];
  return row?.ms ?? null;
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
 * primary key, never through `gen_durable_claims` (see `flushOutcomes` for the trap).
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
 * Plan: reads the executing rows (`gen_durable_claims` or a scan of them; bounded by the
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
       WHERE t.claim = o.claim AND t.status IS NOT DISTINCT FROM 'executing'
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
