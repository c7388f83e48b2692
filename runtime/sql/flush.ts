/**
 * Committing a batch of outcomes: the statement that writes every outcome of a batch at once
 * (guarded by each row's claim), with the consequences of the rows that ended (the settle
 * path, `settle.ts`) and the consumption of the signals their steps were handed.
 */
import { type Queryable, run, statement } from './db.js';
import { appendError } from './loop.js';
import { lockRowsCte, settleCtes } from './settle.js';

/** How an outcome changes `attempt`. */
export const ATTEMPT = { reset: 0, increment: 1, keep: 2 } as const;

/**
 * How an outcome changes the row's await and join columns: `keep` them (a retry, a release:
 * the step runs again as it was woken), set an `await`, begin a `spawn` (its barrier is set
 * by `setBarriers` in the same transaction), or `clear` them (anything else).
 */
export type ActorOp = 'keep' | 'await' | 'spawn' | 'clear';

/** `executing`: a `next` run ahead (the row stays claimed here, its claim token bumped). */
export type OutcomeStatus =
  'runnable' | 'executing' | 'awaiting_signal' | 'awaiting_children' | 'done' | 'failed';

export interface OutcomeRow {
  readonly id: string;
  readonly claim: string;
  readonly status: OutcomeStatus;
  /** New step, or null to keep it. */
  readonly step: string | null;
  /** New state as JSON text, or null to keep it. */
  readonly state: string | null;
  readonly attempt: (typeof ATTEMPT)[keyof typeof ATTEMPT];
  /** Eligible this many ms from now, -1 for never (an await without timeout), null to keep it. */
  readonly delayMs: number | null;
  /** Result as JSON text (terminal `done`), else null. */
  readonly result: string | null;
  /** Replaces `last_error` when not null. */
  readonly lastError: string | null;
  /** Appended to the error history (with the step and attempt it happened at) when not null. */
  readonly error: string | null;
  /** Default `clear`. */
  readonly actor?: ActorOp;
  /** `await`: the names, as a JSON array. */
  readonly awaiting?: string | null;
  /** `await`: signal ids already seen, as a JSON array. */
  readonly seen?: string | null;
  /** Replace the concurrency key with `concurrencyKey` (null releases it); default keep. */
  readonly setKey?: boolean;
  readonly concurrencyKey?: string | null;
  /**
   * The next step's rate limit (name, partition, weight). Absent clears it, unless the
   * outcome keeps its actor state (`retry`, `release`: the same step runs again, limited as it was).
   */
  readonly rateLimit?: string | null;
  readonly ratePartition?: string | null;
  readonly weight?: number;
}

/** What a flush statement includes besides the outcomes themselves. */
export interface FlushShape {
  /** Some outcomes end their rows: settle them (inboxes, parents' barriers). */
  readonly terminal: boolean;
  /**
   * Lock `lockIds` first, in id order: the batch with the parents it counts down and the
   * targets of its signals, so that this flush locks in the one order every flush uses.
   */
  readonly lock: boolean;
  /** Some outcomes consume signals. */
  readonly consume: boolean;
  /** Some outcomes park on signals (their names and seen ids are parsed from JSON). */
  readonly park?: boolean;
  /** Some outcomes keep, set or begin actor state (retry, release, await, spawn). */
  readonly actor?: boolean;
  /** Some outcomes change the concurrency key. */
  readonly key?: boolean;
  /** Some outcomes set a rate limit for their next step. */
  readonly rate?: boolean;
  /** Some outcomes run their next step ahead: their rows keep their claim (`executing`). */
  readonly inline?: boolean;
  /**
   * What the outcomes of the batch change besides status, attempt and claim; a column no
   * outcome changes is neither sent nor set. Absent means some may (the column is sent):
   * - `moves`: a new step or state;
   * - `delays`: a new `eligible_at`;
   * - `results`: a result (`done`); else `result` is cleared;
   * - `errors`: an error to record (`last_error`, the error history).
   */
  readonly moves?: boolean;
  readonly delays?: boolean;
  readonly results?: boolean;
  readonly errors?: boolean;
  /**
   * Rows that end `done` are deleted instead of kept, where nothing reads them after: no
   * parent, not watched by `waitFor`, no inbox (GC's `retention: 0`, eagerly). Plain shapes
   * only (not `terminal`, `lock` or `consume`); default false.
   */
  readonly deletes?: boolean;
}

/** The shape of a batch of rows, as far as the rows tell. */
export function shapeOf(rows: readonly OutcomeRow[]): FlushShape {
  return {
    terminal: false,
    lock: false,
    consume: false,
    park: rows.some((r) => r.actor === 'await'),
    actor: rows.some((r) => r.actor !== undefined && r.actor !== 'clear'),
    key: rows.some((r) => r.setKey === true),
    rate: rows.some((r) => r.rateLimit != null),
    inline: rows.some((r) => r.status === 'executing'),
    moves: rows.some((r) => r.step !== null || r.state !== null),
    delays: rows.some((r) => r.delayMs !== null),
    results: rows.some((r) => r.result !== null),
    errors: rows.some((r) => r.lastError !== null || r.error !== null),
  };
}

const ACTOR_CODE: Record<ActorOp, number> = { clear: 0, keep: 1, await: 2, spawn: 3 };

interface Column {
  readonly name: string;
  readonly type: string;
  readonly value: (r: OutcomeRow) => unknown;
  /**
   * Its values are numbers, digit strings (ids, claim tokens), fixed words (a status) or
   * null, none of which an array literal quotes: sent as one literal built here, not
   * through `pg`'s array serialiser, which quotes and escapes element by element.
   */
  readonly bare?: true;
}

/**
 * The outcome arrays a batch of this shape sends, one parameter each from `$2`: a batch of
 * plain outcomes sends (and unnests) no column it does not use.
 */
function columnsOf(shape: FlushShape): Column[] {
  const columns: Column[] = [
    { name: 'id', type: 'bigint', value: (r) => r.id, bare: true },
    { name: 'claim', type: 'bigint', value: (r) => r.claim, bare: true },
    { name: 'status', type: 'text', value: (r) => r.status, bare: true },
    { name: 'attempt_op', type: 'int', value: (r) => r.attempt, bare: true },
  ];
  if (shape.moves !== false) {
    columns.push(
      { name: 'step', type: 'text', value: (r) => r.step },
      { name: 'state', type: 'text', value: (r) => r.state },
    );
  }
  if (shape.delays !== false)
    columns.push({ name: 'delay_ms', type: 'bigint', value: (r) => r.delayMs, bare: true });
  if (shape.results !== false) columns.push({ name: 'result', type: 'text', value: (r) => r.result });
  if (shape.errors !== false) {
    columns.push(
      { name: 'last_error', type: 'text', value: (r) => r.lastError },
      { name: 'error', type: 'text', value: (r) => r.error },
    );
  }
  if (shape.actor) columns.push({ name: 'actor', type: 'int', value: (r) => ACTOR_CODE[r.actor ?? 'clear'] });
  if (shape.park) {
    columns.push(
      { name: 'awaiting', type: 'text', value: (r) => r.awaiting ?? null },
      { name: 'seen', type: 'text', value: (r) => r.seen ?? null },
    );
  }
  if (shape.key) {
    columns.push(
      { name: 'set_key', type: 'boolean', value: (r) => r.setKey ?? false },
      { name: 'concurrency_key', type: 'text', value: (r) => r.concurrencyKey ?? null },
    );
  }
  if (shape.rate) {
    columns.push(
      { name: 'rate_limit', type: 'text', value: (r) => r.rateLimit ?? null },
      { name: 'rate_partition', type: 'text', value: (r) => r.ratePartition ?? null },
      { name: 'weight', type: 'int', value: (r) => r.weight ?? 1 },
    );
  }
  return columns;
}

/**
 * The rate-limit columns: kept by `keep` outcomes (retry, release), else the outcome's own
 * (none for most: cleared).
 */
function rateSet(shape: FlushShape): string {
  const [limit, partition, weight] = shape.rate
    ? ['o.rate_limit', 'o.rate_partition', 'o.weight']
    : ['NULL', 'NULL', '1'];
  if (!shape.actor) return `rate_limit = ${limit}, rate_partition = ${partition}, weight = ${weight},`;
  return `rate_limit = CASE WHEN o.actor = 1 THEN t.rate_limit ELSE ${limit} END,
       rate_partition = CASE WHEN o.actor = 1 THEN t.rate_partition ELSE ${partition} END,
       weight = CASE WHEN o.actor = 1 THEN t.weight ELSE ${weight} END,`;
}

/**
 * The await and join columns: kept by `keep` (1), set by `await` (2; names and seen ids
 * from JSON), cleared otherwise. Without actor outcomes in the batch, cleared outright.
 */
function actorSet(shape: FlushShape): string {
  if (!shape.actor) {
    return `awaiting = NULL, seen_signals = NULL, timed_out = false, pending_children = NULL, children = NULL,`;
  }
  const parsed = (column: string, from: string, cast: string) =>
    shape.park
      ? `${column} = CASE o.actor WHEN 1 THEN t.${column}
                     WHEN 2 THEN ARRAY(SELECT jsonb_array_elements_text(o.${from}::jsonb)${cast}) END,`
      : `${column} = CASE WHEN o.actor = 1 THEN t.${column} END,`;
  return `${parsed('awaiting', 'awaiting', '')}
       ${parsed('seen_signals', 'seen', '::bigint')}
       timed_out = o.actor = 1 AND t.timed_out,
       pending_children = CASE WHEN o.actor = 1 THEN t.pending_children END,
       children = CASE WHEN o.actor = 1 THEN t.children END,`;
}

/**
 * The claim columns: released, except by outcomes run ahead (`executing`), which keep the
 * node, the lease and the key's slot, and bump the claim token, so that this outcome, were
 * it sent again (a retry after a lost reply), no longer matches, and the next step's outcome
 * commits only on the claim the continuation carries.
 */
function claimSet(shape: FlushShape): string {
  if (!shape.inline) return `concurrency_slot = NULL, locked_by = NULL, lease_expires_at = NULL,`;
  const kept = (column: string) => `${column} = CASE WHEN o.status = 'executing' THEN t.${column} END,`;
  return `claim = CASE WHEN o.status = 'executing' THEN t.claim + 1 ELSE t.claim END,
       ${kept('concurrency_slot')} ${kept('locked_by')} ${kept('lease_expires_at')}`;
}

/**
 * The outcome update. Each row is guarded by its claim: the claim token (bumped by every
 * pick, so it names one claim of one row), `executing` and the owning node must all still
 * hold, so an outcome whose lease was reaped (and maybe re-claimed) commits nothing. Rows are
 * locked in id order (callers sort the batch; see `Flusher`), or all at once first (`lock`).
 *
 * Plan: the rows are found by primary key from the batch's ids (`t.id = ANY ($2)`, then
 * joined to their outcomes by a hash; a seq scan only when the table is small), so the cost
 * grows with the batch, never with the node's rows in flight. The guard on `status` and
 * `locked_by` is a `CASE`, which neither an index condition nor a partial index's predicate
 * can match and which the planner estimates at one row in two. With statistics taken while
 * nothing was executing, plain comparisons are estimated to match almost no row, and the
 * planner then (a) scanned all of the node's rows through `gen_durable_leases` (partial on
 * `status = 'executing'`; measured: 5,000 in flight, 10 outcomes, 49,990 rows filtered,
 * ~13-16 ms), or (b) for a large batch, scanned the table as the outer side of a nested loop
 * that compared every row in flight with every outcome (1,000 outcomes among 60,000 rows:
 * 999,000 rows removed by the join filter, ~240 ms). Both `EXPLAIN`-tested, planned with the
 * batch's values and as a generic plan. A generic plan made while the table was small scans
 * it, and kept doing so as the table grew (~40 ms per flush of 16 rows among 100,000): the
 * plain shapes are prepared by the table's size class (`isPlain`, `table-size.ts`), the
 * others planned with their values every time. Either way the statement carries only what
 * its batch uses (`columnsOf`, `actorSet`, the shape's `moves`/`delays`/`results`/`errors`):
 * the plain drain measured ~0.35 ms slower per flush when every batch sent every column, and
 * a flush of 16 `done`s ~0.5 → ~0.4 ms once the columns they leave alone (step, state,
 * delay, errors) were left out.
 */
function outcomeUpdate(
  shape: FlushShape,
  columns: readonly Column[],
  returning: string,
  /**
   * A condition on the outcomes `o` that leaves some out. The rows are then found from the
   * outcomes alone: beside `t.id = ANY ($2)` it made the planner rescan the batch's rows
   * per outcome (see `deletingFlush`).
   */
  onlyOutcomes?: string,
): string {
  const arrays = columns.map((c, i) => `$${i + 2}::${c.type}[]`).join(', ');
  const names = columns.map((c) => c.name).join(', ');
  const moved =
    shape.moves !== false
      ? `step = COALESCE(o.step, t.step), state = COALESCE(o.state::jsonb, t.state),`
      : '';
  const delayed =
    shape.delays !== false
      ? `eligible_at = CASE WHEN o.delay_ms IS NULL THEN t.eligible_at
                          WHEN o.delay_ms < 0 THEN 'infinity'
                          ELSE now() + o.delay_ms * interval '1 millisecond' END,`
      : '';
  const failed =
    shape.errors !== false
      ? `last_error = COALESCE(o.last_error, t.last_error),
       errors = CASE WHEN o.error IS NULL THEN t.errors ELSE ${appendError('o.error::jsonb')} END,`
      : '';
  return `UPDATE :schema.gen_durable AS t SET
       status = CAST(o.status AS :schema.gen_durable_status),
       ${moved}
       attempt = CASE o.attempt_op WHEN 0 THEN 0 WHEN 1 THEN t.attempt + 1 ELSE t.attempt END,
       ${delayed}
       result = ${shape.results !== false ? 'o.result::jsonb' : 'NULL'},
       ${failed}
       ${actorSet(shape)}
       ${shape.key ? 'concurrency_key = CASE WHEN o.set_key THEN o.concurrency_key ELSE t.concurrency_key END,' : ''}
       ${rateSet(shape)}
       ${claimSet(shape)}
       updated_at = now()
     FROM unnest(${arrays}) AS o(${names})
     WHERE ${shape.lock ? '(SELECT count(*) FROM locked) >= 0 AND ' : ''}${onlyOutcomes === undefined ? 't.id = ANY ($2::bigint[]) AND ' : ''}t.id = o.id AND t.claim = o.claim
       AND CASE WHEN t.status = 'executing' AND t.locked_by = $1::text THEN true ELSE false END
       ${onlyOutcomes === undefined ? '' : `AND ${onlyOutcomes}`}
     RETURNING ${returning}`;
}

/**
 * The plain flush that deletes the rows it ends `done` where nothing reads them after
 * (`FlushShape.deletes`), and updates the others as `outcomeUpdate` does. The update takes
 * every outcome the delete did not take (`o.id NOT IN`, a hashed subplan: evaluating it runs
 * the delete to its end first), so a row whose `watched` a concurrent `waitFor` sets is
 * re-checked by the delete once that commits, left to the update, and updated: never
 * neither. Both halves find their rows from the outcomes, one primary-key probe each
 * (`EXPLAIN`-tested generic and with values in `test/size-classed-plans.test.ts`). Neither
 * has `t.id = ANY ($2)`: with it the update hashed or rescanned the batch's rows per outcome
 * (1,000 outcomes among 60,000 rows: 374,750 rows removed by a join filter), and the delete
 * probed the primary key once per outcome with the whole array in its index condition
 * (each probe matching and sorting the batch's ids: ~36 ms for 1,000 outcomes).
 */
function deletingFlush(shape: FlushShape, columns: readonly Column[]): string {
  return `WITH gone AS (
       DELETE FROM :schema.gen_durable AS t
       USING unnest($2::bigint[], $3::bigint[], $4::text[]) AS o(id, claim, status)
       WHERE t.id = o.id AND t.claim = o.claim AND o.status = 'done'
         AND CASE WHEN t.status = 'executing' AND t.locked_by = $1::text THEN true ELSE false END
         AND NOT t.watched AND NOT t.inbox AND t.parent_id IS NULL
       RETURNING t.id
     ), upd AS (${outcomeUpdate(shape, columns, 't.id, t.watched, t.inbox', 'o.id NOT IN (SELECT id FROM gone)')})
     ${report('upd', ['upd', 'gone'])}`;
}

/**
 * What a flush returns of its batch (`FlushRow`): the rows it wrote that someone reads after
 * (`flagged`, a CTE of `id, watched, inbox`: watched by a `waitFor`, or holding an inbox),
 * and every outcome that did not apply (`stale`: in none of the `written` CTEs). A row
 * written with neither flag is not returned: a batch of plain jobs brings back no row at
 * all, where each row used to come back (id, flags, kind) to be parsed by the node. The
 * outcomes that did not apply are found by a hash anti-join of the batch's ids with what
 * was written.
 */
function report(flagged: string, written: readonly string[]): string {
  const none = written.map((w) => `NOT EXISTS (SELECT 1 FROM ${w} WHERE ${w}.id = o.id)`).join(' AND ');
  return `SELECT id::text AS id, watched, inbox, NULL::text AS queue, 'applied' AS kind FROM ${flagged}
     WHERE watched OR inbox
     UNION ALL SELECT o.id::text, false, false, NULL, 'stale' FROM unnest($2::bigint[]) AS o(id) WHERE ${none}`;
}

/** The statement for a batch of this shape. */
export function flushSql(shape: FlushShape): string {
  const columns = columnsOf(shape);
  if (!shape.terminal && !shape.lock && !shape.consume) {
    if (shape.deletes) return deletingFlush(shape, columns);
    return `WITH upd AS (${outcomeUpdate(shape, columns, 't.id, t.watched, t.inbox')})
     ${report('upd', ['upd'])}`;
  }
  const ctes: string[] = [];
  const next = columns.length + 2; // the first parameter after the outcome arrays
  const c = shape.lock ? next + 1 : next;
  if (shape.lock) ctes.push(lockRowsCte(`$${next}::bigint[]`));
  ctes.push(
    `upd AS (${outcomeUpdate(shape, columns, 't.id, t.watched, t.status::text AS status, t.inbox, t.parent_id')})`,
  );
  if (shape.terminal) ctes.push(settleCtes('upd'));
  if (shape.consume) {
    ctes.push(`consumed AS (
       DELETE FROM :schema.gen_durable_signals s
       USING unnest($${c}::bigint[], $${c + 1}::bigint[]) AS c(id, owner)
       WHERE s.id = c.id AND s.instance_id = c.owner AND c.owner IN (SELECT id FROM upd)
     )`);
  }
  const joined = shape.terminal
    ? `UNION ALL SELECT id::text, false, false, queue, 'joined' FROM settle_joined WHERE status = 'runnable'`
    : '';
  return `WITH ${ctes.join(', ')}
     ${report('upd', ['upd'])} ${joined}`;
}

/** The parameters of a flush of `rows` in `shape`. */
export function flushOutcomeValues(
  nodeId: string,
  rows: readonly OutcomeRow[],
  shape: FlushShape,
): unknown[] {
  return [nodeId, ...columnsOf(shape).map((c) => (c.bare ? bareArray(rows, c.value) : rows.map(c.value)))];
}

/** The array literal of values that need no quoting (`Column.bare`): `{1,2,NULL}`. */
function bareArray(rows: readonly OutcomeRow[], value: (r: OutcomeRow) => unknown): string {
  let literal = '{';
  for (let i = 0; i < rows.length; i++) {
    const v = value(rows[i]!) as string | number | null | undefined;
    if (i > 0) literal += ',';
    literal += v === null || v === undefined ? 'NULL' : String(v);
  }
  return `${literal}}`;
}

export interface FlushRow {
  readonly id: string;
  readonly watched: boolean;
  /** A signal was ever stored for the row (after this commit). */
  readonly inbox: boolean;
  readonly queue: string | null;
  /**
   * `applied`: an outcome of the batch that committed, on a row that is watched or has an
   * inbox (the others that committed are not returned); `stale`: an outcome of the batch that
   * did not apply (its claim no longer held); `joined`: a parent whose children all ended.
   */
  readonly kind: 'applied' | 'stale' | 'joined';
}

/**
 * A flush of outcomes that only move their own rows (no settling, locking, signals, actor
 * state, keys or limits): the hot statement of plain jobs and machines, prepared by the
 * table's size class (`table-size.ts`). Its generic plan probes the primary key for the
 * batch's ids (`EXPLAIN`-tested in `test/size-classed-plans.test.ts`); the other shapes, rarer
 * and with more joins, are planned with their values every time.
 */
function isPlain(shape: FlushShape): boolean {
  return !(
    shape.terminal ||
    shape.lock ||
    shape.consume ||
    shape.park ||
    shape.actor ||
    shape.key ||
    shape.rate
  );
}

/**
 * Commits a batch of outcomes in one statement; returns the outcomes that did not apply, the
 * applied ones on watched rows or rows with an inbox, and the parents that became runnable
 * because their last children ended here (see `report`).
 */
export async function flushOutcomes(
  db: Queryable,
  schema: string,
  nodeId: string,
  rows: readonly OutcomeRow[],
  extra: {
    shape?: FlushShape;
    lockIds?: readonly string[];
    consumed?: ReadonlyArray<{ id: string; owner: string }>;
  } = {},
): Promise<FlushRow[]> {
  const shape = extra.shape ?? shapeOf(rows);
  const stmt = statement(schema, 'flush', flushSql(shape), { prepared: isPlain(shape) ? 'by-size' : false });
  const values = flushOutcomeValues(nodeId, rows, shape);
  if (shape.lock) values.push(extra.lockIds ?? []);
  if (shape.consume) {
    values.push(
      (extra.consumed ?? []).map((c) => c.id),
      (extra.consumed ?? []).map((c) => c.owner),
    );
  }
  return run<FlushRow>(db, stmt, values);
}
