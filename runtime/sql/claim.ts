/**
 * Claiming a batch: the pick statements (the plain one, and the guarded one that admits
 * steps under concurrency keys and rate limits), the actor state loaded for a batch, and the
 * queue's next due time.
 */
import { type Queryable, run, statement } from './db.js';
import { type RateReport, rateCtes, RATE_REPORT } from './rates.js';
import { noteTableSize } from './table-size.js';
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
 * `prio(p, e, i)`: the distinct priorities `p` of a queue's runnable rows (queue `$1`), in
 * order, one index probe each (a loose index scan of `gen_durable_pick`), each with the
 * `(eligible_at, id)` of its first runnable row. Evaluated lazily: a consumer that stops
 * early stops the walk.
 *
 * A scan of one priority starts at that first row (`PRIORITY_FROM`), not at the start of the
 * priority: the index entries ahead of it are those of rows already claimed (dead, but read
 * until vacuum removes them), which the probe has just stepped over once.
 */
const PRIORITY_WALK = `WITH RECURSIVE prio(p, e, i) AS (
       (SELECT priority, eligible_at, id FROM :schema.gen_durable
        WHERE queue = $1 AND status = 'runnable' ORDER BY priority, eligible_at, id LIMIT 1)
       UNION ALL
       SELECT n.priority, n.eligible_at, n.id FROM prio CROSS JOIN LATERAL (
         SELECT priority, eligible_at, id FROM :schema.gen_durable
         WHERE queue = $1 AND status = 'runnable' AND priority > prio.p
         ORDER BY priority, eligible_at, id LIMIT 1
       ) n
     )`;

/** The rows of priority `prio.p` from its first runnable row on (columns of `alias`). */
const PRIORITY_FROM = (alias = '') =>
  `${alias}priority = prio.p AND (${alias}eligible_at, ${alias}id) >= (prio.e, prio.i)`;

/**
 * The claim of queues without concurrency keys: no key logic at all. A keyed row it meets
 * cannot be claimed by it — executing without a slot violates `gen_durable_concurrency_slot`
 * — so the statement fails, and the node switches that queue to `CLAIM_KEYED_SQL`.
 */
export const CLAIM_BATCH_SQL = `${PRIORITY_WALK},
     picked AS (
       SELECT c.id FROM prio CROSS JOIN LATERAL (
         SELECT id FROM :schema.gen_durable
         WHERE queue = $1 AND status = 'runnable' AND ${PRIORITY_FROM()} AND eligible_at <= now()
           AND ($5::text[] IS NULL OR fsm || '@' || version = ANY ($5::text[]))
         ORDER BY eligible_at, id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED
       ) c
       LIMIT $2
     )
     UPDATE :schema.gen_durable AS t
     SET status = 'executing', locked_by = $3, claim = t.claim + 1, concurrency_slot = NULL,
         lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now()
     WHERE t.id = ANY (ARRAY(SELECT id FROM picked))
     RETURNING t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.step, t.state::text AS state,
               t.attempt, t.max_attempts, t.correlation_key, t.concurrency_key, ${CLAIM_EXTRAS},
               (SELECT pg_relation_size(':schema.gen_durable'))::text AS heap_bytes`;

/**
 * How many steps of a row's concurrency key may run at once: a configured gate's limit for
 * keys `<gate>:...` (`$6` gate names, `$7` limits), else 1.
 */
const KEY_LIMIT = (key: string) =>
  `COALESCE((SELECT g.l FROM unnest($6::text[], $7::int[]) AS g(p, l) WHERE g.p = split_part(${key}, ':', 1)), 1)`;

/**
 * The guarded claim: the claim of queues whose rows may carry concurrency keys or rate
 * limits (see `claimBatch`), in one statement:
 * - `picked`: the candidates, in urgency order. A key already running K steps is skipped
 *   (one probe of `gen_durable_concurrency_active`, only for rows with a key).
 * - `ranked`/`keyed_ok`: the r-th row of a key in this batch takes the r-th free slot of the
 *   key, if there is one; the others stay runnable (their key frees when a step of it ends).
 *   Only keyed rows are ranked (sorted): a batch without keys sorts nothing.
 * - the rate admission (`rateCtes`) over the rows the keys admitted: tokens are only spent
 *   on rows that are claimed (if the index refuses the claim, the statement and its debits
 *   roll back together); rows a bucket cannot take now are booked into its line (put off
 *   until their turn), rows naming a limit nobody declared are put off by `$8` ms
 *   (reported each time).
 * Every row returned carries the admission report (`RATE_REPORT`, as `rate_report`); when
 * nothing was claimed, one row of nulls carries it.
 *
 * An executing row with a limit always has a `concurrency_slot` (its slot, or -1 unkeyed):
 * the plain claim sets none, and `gen_durable_concurrency_slot` refuses it.
 */
export const CLAIM_GUARDED_SQL = `${PRIORITY_WALK},
     picked AS (
       SELECT c.*, prio.p FROM prio CROSS JOIN LATERAL (
         SELECT x.id, x.concurrency_key, x.eligible_at, x.rate_limit, x.rate_partition, x.weight, x.rate_booked,
                CASE WHEN x.concurrency_key IS NULL THEN NULL ELSE ${KEY_LIMIT('x.concurrency_key')} END AS k
         FROM :schema.gen_durable x
         WHERE x.queue = $1 AND x.status = 'runnable' AND ${PRIORITY_FROM('x.')} AND x.eligible_at <= now()
           AND ($5::text[] IS NULL OR x.fsm || '@' || x.version = ANY ($5::text[]))
           AND CASE WHEN x.concurrency_key IS NULL THEN true
                    ELSE (SELECT count(*) FROM :schema.gen_durable e
                          WHERE e.concurrency_key = x.concurrency_key AND e.status = 'executing')
                         < ${KEY_LIMIT('x.concurrency_key')} END
         ORDER BY x.eligible_at, x.id
         LIMIT $2
         FOR NO KEY UPDATE SKIP LOCKED
       ) c
       LIMIT $2
     ),
     ranked AS (
       SELECT p.id, p.k,
              row_number() OVER (PARTITION BY p.concurrency_key ORDER BY p.p, p.eligible_at, p.id) AS r,
              (SELECT COALESCE(array_agg(e.concurrency_slot), '{}') FROM :schema.gen_durable e
               WHERE e.concurrency_key = p.concurrency_key AND e.status = 'executing') AS taken
       FROM picked p WHERE p.concurrency_key IS NOT NULL
     ),
     keyed_ok AS (
       SELECT p.*, CASE WHEN p.rate_limit IS NULL THEN NULL ELSE -1 END AS slot FROM picked p
       WHERE p.concurrency_key IS NULL
       UNION ALL
       SELECT p.*, (SELECT s FROM generate_series(0, r.k - 1) AS s WHERE s <> ALL (r.taken) ORDER BY s OFFSET r.r - 1 LIMIT 1)
       FROM ranked r JOIN picked p ON p.id = r.id WHERE r.r <= r.k - cardinality(r.taken)
     ),
     ${rateCtes('keyed_ok', '$8')},
     admitted AS (
       SELECT id, slot FROM keyed_ok WHERE rate_limit IS NULL
       UNION ALL
       SELECT k.id, k.slot FROM rate_admitted a JOIN keyed_ok k ON k.id = a.id
     ),
     claimed AS (
       UPDATE :schema.gen_durable AS t
       SET status = 'executing', locked_by = $3, claim = t.claim + 1, concurrency_slot = admitted.slot,
           rate_booked = false, lease_expires_at = now() + $4 * interval '1 millisecond', updated_at = now()
       FROM admitted WHERE t.id = admitted.id
       RETURNING t.id::text AS id, t.claim::text AS claim, t.fsm, t.version, t.step, t.state::text AS state,
                 t.attempt, t.max_attempts, t.correlation_key, t.concurrency_key, ${CLAIM_EXTRAS}
     ),
     report AS (
       SELECT CASE WHEN EXISTS (SELECT 1 FROM rated) OR EXISTS (SELECT 1 FROM put_off)
                   THEN ${RATE_REPORT} END AS rate_report
     )
     SELECT claimed.*, report.rate_report FROM report LEFT JOIN claimed ON true`;

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
export async function claimBatch(db: Queryable, schema: string, args: ClaimArgs): Promise<ClaimedRow[]> {
  if (args.guarded) return (await claimGuarded(db, schema, args)).rows;
  // Prepared by the table's size class (`table-size.ts`): a generic plan made while the table
  // was small scans it, and must not outlive that size. The rows to update are found by
  // primary key from the picked ids (`= ANY (ARRAY(...))`), so the generic plan of a large
  // table is index-driven too (joined to `picked`, it hashed the whole table: ~20 ms).
  const stmt = statement(schema, 'claim', CLAIM_BATCH_SQL, { prepared: 'by-size' });
  const rows = await run<ClaimedRow & { heap_bytes?: string }>(db, stmt, plainValues(args));
  if (rows.length > 0) {
    // On every row, as text: `pg` would test a bigint column against a pattern row by row.
    const bytes = Number(rows[0]!.heap_bytes);
    noteTableSize(db, schema, bytes);
    if (args.sameDatabase) noteTableSize(args.sameDatabase, schema, bytes);
  }
  return rows;
}

export interface ClaimArgs {
  readonly queue: string;
  readonly limit: number;
  readonly nodeId: string;
  readonly leaseMs: number;
  readonly machines?: readonly string[] | null;
  /**
   * Another pool on the same database (the node's, when the pick runs on its own connections,
   * `pick-pool.ts`): the table size the pick reads is noted for it too, for the statements
   * prepared by size class there (the flush).
   */
  readonly sameDatabase?: object | undefined;
  /** Use the guarded claim (`CLAIM_GUARDED_SQL`): the queue's rows may carry concurrency keys or rate limits. */
  readonly guarded?: boolean;
  /** Gates raising the concurrency of keys `<gate>:...`: gate name → limit (guarded claim). */
  readonly gates?: Readonly<Record<string, number>>;
}

/** How long a row naming an undeclared rate limit is put off by each pick that meets it. */
export const UNKNOWN_LIMIT_DEFER_MS = 5_000;

function plainValues(args: ClaimArgs): unknown[] {
  return [args.queue, args.limit, args.nodeId, args.leaseMs, args.machines ?? null];
}

/** The guarded claim (unprepared: its generic plan took 376 ms): the rows claimed and the admission report. */
export async function claimGuarded(
  db: Queryable,
  schema: string,
  args: ClaimArgs,
): Promise<{ rows: ClaimedRow[]; report: RateReport | null }> {
  const stmt = statement(schema, 'claim_guarded', CLAIM_GUARDED_SQL, { prepared: false });
  const result = await run<ClaimedRow & { rate_report: RateReport | null }>(db, stmt, [
    ...plainValues(args),
    Object.keys(args.gates ?? {}),
    Object.values(args.gates ?? {}),
    UNKNOWN_LIMIT_DEFER_MS,
  ]);
  const report = result[0]?.rate_report ?? null;
  const rows = result.filter((r) => r.id !== null).map(({ rate_report: _, ...row }) => row);
  return { rows, report };
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
       WHERE queue = $1 AND status = 'runnable' AND ${PRIORITY_FROM()} AND eligible_at > now()
         AND ($2::text[] IS NULL OR fsm || '@' || version = ANY ($2::text[]))
       ORDER BY eligible_at LIMIT 1
     ) n`,
    { prepared: false },
  );
  const row = (await run<{ ms: number | null }>(db, stmt, [queue, machines]))[0];
  return row?.ms ?? null;
}
