-- gen-durable schema, version 9: rows without a correlation key store no correlation scope.
--
-- `correlation_scope` says in which statuses a row's correlation key is occupied; a row
-- without a key occupies nothing, and every statement that reads the scope looks rows up by
-- key. Stored for every row all the same, the default scope (four statuses) took ~40 of a
-- plain job's ~210 bytes, written again by each of its updates. From now on a keyless row
-- stores NULL (rows already stored keep theirs; nothing is rewritten). Operators reading the
-- table: NULL scope on a row with no key means the key-less case, not an empty scope.
ALTER TABLE :schema.gen_durable ALTER COLUMN correlation_scope DROP NOT NULL;
