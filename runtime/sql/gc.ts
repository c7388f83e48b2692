/** Statements of garbage collection: deleting finished rows past their retention. */
import { type Queryable, run, statement } from './db.js';

/**
 * Deletes up to `$2` terminal rows that finished more than `$1` ms ago, oldest first, and
 * returns how many went. A finished child whose parent still waits for its children
 * (`awaiting_children`) is kept: the parent's barrier reads it. Rows another transaction
 * holds are skipped, never waited on, so two leaders may sweep at once.
 *
 * Plan: a range scan of `gen_durable_finished_at` (on `finished_at`, set only on terminal
 * rows, migration 008) up to the cutoff, in index order, stopped by the LIMIT; one
 * primary-key probe per candidate with a parent; then a delete by primary key. The guard is
 * a scalar subquery on purpose: written as `NOT EXISTS` the planner turns it into a hash
 * anti-join and seq-scans the whole table for the (few) waiting parents (measured: 43,005
 * rows filtered among 43,006 to delete 100). The cost follows the batch, never live rows
 * (not in the index) nor young finished ones (past the cutoff). The one exception: kept
 * children (finished, their parent awaiting) older than the cutoff are read again by every
 * sweep until their parent moves on. `EXPLAIN`-tested (`test/gc.test.ts`). Not prepared:
 * planned with the actual cutoff and batch. Signals left in a deleted row's inbox (one that
 * arrived as it ended) go with it, by index.
 */
export const DELETE_FINISHED_SQL = `WITH doomed AS (
       SELECT t.id FROM :schema.gen_durable t
       WHERE t.finished_at < now() - $1 * interval '1 millisecond'
         AND (t.parent_id IS NULL
              OR (SELECT p.status FROM :schema.gen_durable p WHERE p.id = t.parent_id)
                 IS DISTINCT FROM 'awaiting_children')
       ORDER BY t.finished_at
       LIMIT $2
       FOR UPDATE OF t SKIP LOCKED
     ), deleted AS (
       DELETE FROM :schema.gen_durable t USING doomed WHERE t.id = doomed.id RETURNING 1
     ), signals AS (
       DELETE FROM :schema.gen_durable_signals WHERE instance_id = ANY (ARRAY(SELECT id FROM doomed))
     )
     SELECT count(*)::int AS deleted FROM deleted`;

export async function deleteFinished(
  db: Queryable,
  schema: string,
  retentionMs: number,
  batch: number,
): Promise<number> {
  const stmt = statement(schema, 'gc', DELETE_FINISHED_SQL, { prepared: false });
  const [row] = await run<{ deleted: number }>(db, stmt, [retentionMs, batch]);
  return row?.deleted ?? 0;
}
