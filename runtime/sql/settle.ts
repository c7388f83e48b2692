/**
 * The one settle path: what follows when instances end (`done`, `failed`, `cancelled`),
 * written once and used by every statement that ends instances — the flush, the reaper's
 * abandon, `cancel`:
 *
 * - their inboxes are cleared;
 * - each parent awaiting its children (`awaiting_children`) is counted down by its children
 *   that ended in this statement, together (siblings ending in one flush count down once);
 *   at zero it becomes runnable at its join step.
 *
 * Waiters are told by the caller (the rows come back `watched`). A parent is counted down
 * through its own row, so two statements ending siblings at once serialise on it and
 * neither count is lost (the second re-reads the first's committed count).
 *
 * Lock order: a parent's id is lower than its children's (it existed first). A statement
 * that ends children with parents must lock the parents first, in id order with the rest
 * (see `LOCK_ROWS`), or it can deadlock with one that locks in id order.
 */
import { LIVE_STATUSES, TERMINAL_STATUSES } from '../status.js';

/** The terminal and the live statuses as SQL lists, from the one definition in `status.ts`. */
export const TERMINAL = `(${TERMINAL_STATUSES.map((s) => `'${s}'`).join(', ')})`;
export const LIVE = `(${LIVE_STATUSES.map((s) => `'${s}'`).join(', ')})`;

/**
 * CTEs settling the rows of `source` (a CTE with columns `id`, `status` (text), `inbox`,
 * `parent_id`) that ended: `settle_cleared` and `settle_joined` (columns `id`, `queue`,
 * `status` of the parents counted down). Prefix with a comma.
 */
export function settleCtes(source: string): string {
  return `settle_cleared AS (
       DELETE FROM :schema.gen_durable_signals
       WHERE instance_id = ANY (ARRAY(SELECT id FROM ${source} WHERE status IN ${TERMINAL} AND inbox))
     ), settle_joined AS (
       UPDATE :schema.gen_durable AS p SET
         pending_children = p.pending_children - c.n,
         status = CASE WHEN p.pending_children - c.n <= 0 THEN 'runnable' ELSE p.status END,
         eligible_at = CASE WHEN p.pending_children - c.n <= 0 THEN now() ELSE p.eligible_at END,
         updated_at = now()
       FROM (SELECT parent_id, count(*)::int AS n FROM ${source}
             WHERE status IN ${TERMINAL} AND parent_id IS NOT NULL GROUP BY parent_id) AS c
       WHERE p.id = c.parent_id AND p.status = 'awaiting_children'
       RETURNING p.id, p.queue, p.status::text AS status
     )`;
}

/**
 * Locks rows in id order (`ids`: an SQL expression of a bigint[]), as a CTE named `locked`;
 * a statement that references `(SELECT count(*) FROM locked)` in its first qualifier takes
 * these locks (an InitPlan, evaluated once before its first row is written) before any of
 * its own.
 */
export function lockRowsCte(ids: string): string {
  return `locked AS MATERIALIZED (
       SELECT id FROM :schema.gen_durable WHERE id = ANY (${ids}) ORDER BY id FOR NO KEY UPDATE
     )`;
}
