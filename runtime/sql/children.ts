/** Statements of children: the join barrier a `spawn` parks its parent on. */
import { type Queryable, run, statement } from './db.js';

/**
 * Sets the barriers of parents that just spawned (in the flush's transaction, after their
 * children were inserted): how many children are running and which they are. A parent none
 * of whose children was inserted (none given, or every one a duplicate of an occupied
 * correlation key) proceeds at once: runnable at its join step with no children.
 * The children cannot end before this commits: they are inserted in the same transaction.
 */
export async function setBarriers(
  db: Queryable,
  schema: string,
  barriers: ReadonlyArray<{ id: string; children: readonly string[] }>,
): Promise<Array<{ id: string; queue: string; runnable: boolean }>> {
  const stmt = statement(
    schema,
    'set_barriers',
    `UPDATE :schema.gen_durable AS t SET
       pending_children = b.n,
       children = ARRAY(SELECT jsonb_array_elements_text(b.ids::jsonb)::bigint),
       status = CASE WHEN b.n = 0 THEN 'runnable' ELSE t.status END,
       eligible_at = CASE WHEN b.n = 0 THEN now() ELSE t.eligible_at END
     FROM unnest($1::bigint[], $2::int[], $3::text[]) AS b(id, n, ids)
     WHERE t.id = b.id AND t.status = 'awaiting_children'
     RETURNING t.id::text AS id, t.queue, t.status = 'runnable' AS runnable`,
    { prepared: false },
  );
  return run(db, stmt, [
    barriers.map((b) => b.id),
    barriers.map((b) => b.children.length),
    barriers.map((b) => JSON.stringify(b.children)),
  ]);
}
