-- gen-durable schema, version 2: which machines each node can run.
--
-- A node claims only rows of the machines (name@version) it can run, unless it has a
-- `resolve` hook (then it may run any: serves_any). `gen-durable status` uses these columns
-- to show live rows that no live node can serve (a queue nobody runs, a machine or version
-- no node knows).

ALTER TABLE :schema.gen_durable_nodes
  ADD COLUMN machines   text[]  NOT NULL DEFAULT '{}',
  ADD COLUMN serves_any boolean NOT NULL DEFAULT false;
