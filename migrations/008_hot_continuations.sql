-- gen-durable schema, version 8: updates that keep a row claimed can be HOT.
--
-- An update is HOT (no index entry written, only the heap tuple, on the same page) when no
-- indexed column changes value and the page has room. `gen_durable_finished` keyed every
-- terminal row by `updated_at`, which every write changes: so no update could be HOT. It is
-- replaced by an index on `finished_at`, a stored column generated from the status: the
-- last write's time once the row is terminal, else NULL. A write that leaves a row live
-- (a step run ahead committing on the claim it holds) changes no indexed column.
--
-- Adding a stored generated column rewrites the table once. `fillfactor` 80 leaves a fifth
-- of each page for new versions of its rows (HOT, or at least on the same page).
ALTER TABLE :schema.gen_durable
  ADD COLUMN finished_at timestamptz GENERATED ALWAYS AS (
    CASE WHEN status IN ('done', 'failed', 'cancelled') THEN updated_at END) STORED;

-- GC: terminal rows, oldest finish first (see `runtime/sql/gc.ts`). Live rows are not in it.
CREATE INDEX gen_durable_finished_at ON :schema.gen_durable (finished_at) WHERE finished_at IS NOT NULL;
DROP INDEX :schema.gen_durable_finished;

ALTER TABLE :schema.gen_durable SET (fillfactor = 80);
