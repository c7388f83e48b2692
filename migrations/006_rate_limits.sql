-- gen-durable schema, version 6: token-bucket rate limits.
--
-- A step may name a limit (`rate_limit`, with an optional `rate_partition` for a bucket per
-- partition) and a `weight` (tokens it costs). Limits are declared by the nodes that join
-- (`gen_durable_rate_configs`, the last declaration wins); the pick admits a limited step only
-- if its bucket holds enough tokens, debiting the bucket in the same statement.
--
-- A bucket stores what it held when it last granted (`tokens`, at `refreshed_at`); it holds
-- min(burst, tokens + elapsed × allowed / period) now. A bucket that does not exist counts
-- as full: the first grant creates it, already debited. The leader prunes buckets that are
-- full again with no line ahead (forgetting them loses nothing) and buckets of limits no
-- longer declared.

ALTER TABLE :schema.gen_durable ADD COLUMN rate_partition text,
  -- Booked into its bucket's line (put off until its turn); cleared when claimed.
  ADD COLUMN rate_booked boolean NOT NULL DEFAULT false;

-- The limits each node declares: a limit stays declared while a registered node declares it
-- (the leader's housekeeping removes the others, with their buckets).
ALTER TABLE :schema.gen_durable_nodes ADD COLUMN rate_limits text[] NOT NULL DEFAULT '{}';

CREATE TABLE :schema.gen_durable_rate_configs (
  name        text PRIMARY KEY,
  allowed     integer NOT NULL CHECK (allowed >= 1),
  period_ms   bigint NOT NULL CHECK (period_ms >= 1),
  burst       integer NOT NULL CHECK (burst >= 1),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE :schema.gen_durable_rate_buckets (
  name          text NOT NULL,
  -- '' for the limit's one bucket; the partition otherwise (partitions are non-empty).
  partition     text NOT NULL,
  tokens        double precision NOT NULL,
  refreshed_at  timestamptz NOT NULL,
  -- Tokens taken by the latest grant (what the pick that wrote the bucket admitted).
  granted       integer NOT NULL,
  -- The bucket's line: rows it could not take are booked into it, each put off until the
  -- bucket will have refilled for it and every row before it; `booked_until` is the end of
  -- the line. While it is ahead, only booked rows are granted (`line`: the latest grant
  -- found it so), so nothing overtakes a row in the line.
  line          boolean NOT NULL DEFAULT false,
  booked_until  timestamptz,
  PRIMARY KEY (name, partition)
);

-- The booked rows of a bucket, for the pick that finds its bucket full again and asks
-- whether anyone is still in its line (they may all have been cancelled). Only booked rows
-- are in it.
CREATE INDEX gen_durable_rate_booked ON :schema.gen_durable (rate_limit, (COALESCE(rate_partition, '')))
  WHERE rate_booked AND status = 'runnable';

-- An executing row that names a limit was admitted by the rate-aware pick, which always sets
-- its `concurrency_slot` (a keyed row's slot, -1 for an unkeyed one); the plain pick sets
-- none, so it cannot claim a limited row and the node switches the queue to the other pick.
ALTER TABLE :schema.gen_durable DROP CONSTRAINT gen_durable_concurrency_slot,
  ADD CONSTRAINT gen_durable_concurrency_slot CHECK (
    status <> 'executing' OR (concurrency_key IS NULL AND rate_limit IS NULL) OR concurrency_slot IS NOT NULL);
