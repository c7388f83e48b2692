-- gen-durable schema, version 3: garbage collection of finished rows.
--
-- GC deletes terminal rows (done, failed, cancelled) whose last write (`updated_at`) is
-- older than the retention, a batch at a time. This index holds only terminal rows, ordered
-- by their last write, so a sweep range-scans `updated_at < cutoff` and stops after a batch:
-- live rows are not in it at all, and young finished rows lie past the cutoff. Its predicate
-- is spelled exactly as the GC statement's (`runtime/sql/gc.ts`), so the planner can prove
-- the statement matches it.
CREATE INDEX gen_durable_finished ON :schema.gen_durable (updated_at)
  WHERE status IN ('done', 'failed', 'cancelled');
