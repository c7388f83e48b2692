-- gen-durable schema, version 5: concurrency keys.
--
-- Steps of instances sharing a `concurrency_key` run at most K at a time across the cluster
-- (K = 1, or a configured gate's limit for keys `<gate>:...`). An executing keyed row holds
-- one of its key's slots 0 .. K-1 (`concurrency_slot`, chosen by the pick); this index
-- makes a second executing row in one slot of one key uncommittable, whatever a picker
-- believed. Awaiting, runnable and finished rows are not in it: parking releases the slot.
-- The pick probes it per candidate key (never reading the whole executing set).

ALTER TABLE :schema.gen_durable ADD COLUMN concurrency_slot integer,
  -- A keyed row executes in a slot: without one it would escape the index below.
  ADD CONSTRAINT gen_durable_concurrency_slot CHECK (
    status <> 'executing' OR concurrency_key IS NULL OR concurrency_slot IS NOT NULL);

CREATE UNIQUE INDEX gen_durable_concurrency_active ON :schema.gen_durable (concurrency_key, concurrency_slot)
  WHERE status = 'executing' AND concurrency_key IS NOT NULL;
