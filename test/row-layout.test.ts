/**
 * The instance row's physical layout (migration 010): the columns a claim and an outcome
 * change sit together at the end of the row, and pages keep half their room, so each
 * transition logs only what it changes. The rebuild keeps every row, id and index.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { Cluster, ValidationError, createClient, migrate } from '../index.js';
import { LATEST_VERSION } from '../migrations/migrate.js';
import { noop } from './fixtures/machines.js';
import { eventually } from './support/db.js';

const url = inject('databaseUrl');
const pool = new pg.Pool({ connectionString: url, max: 4 });
const schemas: string[] = [];

const roles: string[] = [];

afterAll(async () => {
  for (const schema of schemas) await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  for (const role of roles) await pool.query(`DROP OWNED BY ${role}; DROP ROLE ${role}`);
  await pool.end();
});

/** A fresh schema migrated up to `toVersion` (default: the latest). */
async function schemaAt(toVersion?: number): Promise<string> {
  const schema = `layout_${randomBytes(5).toString('hex')}`;
  schemas.push(schema);
  await migrate({ pool, schema, ...(toVersion === undefined ? {} : { toVersion }) });
  return schema;
}

/** What the catalog says of the table, in an order that does not depend on column positions. */
async function catalogOf(
  schema: string,
): Promise<{ columns: string[]; indexes: string[]; constraints: string[] }> {
  const table = `"${schema}".gen_durable`;
  const strip = (s: string) => s.replaceAll(`${schema}.`, 'S.');
  const columns = await pool.query<{ c: string }>(
    `SELECT concat_ws('|', attname, format_type(atttypid, atttypmod), attnotnull, pg_get_expr(adbin, adrelid),
                      attidentity, attgenerated) AS c
       FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
      WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname`,
    [table],
  );
  const indexes = await pool.query<{ d: string }>(
    `SELECT indexdef AS d FROM pg_indexes WHERE schemaname = $1 AND tablename = 'gen_durable' ORDER BY 1`,
    [schema],
  );
  const constraints = await pool.query<{ d: string }>(
    `SELECT conname || ' ' || pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conrelid = $1::regclass ORDER BY 1`,
    [table],
  );
  return {
    columns: columns.rows.map((r) => strip(r.c)),
    indexes: indexes.rows.map((r) => strip(r.d)),
    constraints: constraints.rows.map((r) => strip(r.d)),
  };
}

async function rowsOf(schema: string): Promise<unknown[]> {
  const { rows } = await pool.query<{ r: unknown }>(
    `SELECT to_jsonb(t) AS r FROM "${schema}".gen_durable t ORDER BY id`,
  );
  return rows.map((r) => r.r);
}

async function identityPosition(schema: string): Promise<string | null> {
  const { rows } = await pool.query<{ v: string | null }>(
    `SELECT pg_sequence_last_value(pg_get_serial_sequence($1, 'id')::regclass)::text AS v`,
    [`"${schema}".gen_durable`],
  );
  return rows[0]!.v;
}

describe('migration 010: the row rebuilt in a new column order', () => {
  it('keeps every row, id, default, constraint and index, and the identity goes on where it was', async () => {
    const schema = await schemaAt(9);
    const t = `"${schema}".gen_durable`;
    // Rows of every kind the columns can hold, then the newest deleted: the identity is past
    // every id left in the table.
    await pool.query(
      `INSERT INTO ${t} (fsm, step, state, queue, correlation_key, correlation_scope, priority, eligible_at)
         VALUES ('order', 'pay', '{"total": 5}', 'q', 'order:1', '{runnable,executing}', 3, now() + interval '1 hour');
       INSERT INTO ${t} (fsm, step, state, queue, correlation_scope, status, result, errors, last_error, attempt)
         VALUES ('job', 'perform', '{}', 'q', NULL, 'done', '{"ok": true}',
                 '[{"attempt": 1, "error": "boom"}]', 'boom', 2);
       INSERT INTO ${t} (fsm, step, state, queue, correlation_scope, status, locked_by, claim, lease_expires_at,
                         concurrency_key, concurrency_slot, rate_limit, rate_partition, weight, parent_id)
         VALUES ('job', 'perform', '{}', 'q', NULL, 'executing', 'node-a', 7, now() + interval '30 seconds',
                 'tenant:1', 1, 'api', 'p1', 2, 1);
       INSERT INTO ${t} (fsm, step, state, queue, correlation_scope, status, awaiting, seen_signals, timed_out,
                         inbox, pending_children, children, watched, rate_booked)
         VALUES ('actor', 'wait', '{"n": [1, 2]}', 'q', NULL, 'awaiting_signal', '{go,stop}', '{4,5}', true,
                 true, 2, '{1,3}', true, true);
       INSERT INTO ${t} (fsm, step, state, queue) VALUES ('gone', 's', '{}', 'q');
       DELETE FROM ${t} WHERE fsm = 'gone';`,
    );
    // Privileges and comments on the table and its identity go over too.
    const role = `layout_reader_${randomBytes(4).toString('hex')}`;
    roles.push(role);
    await pool.query(
      `CREATE ROLE ${role};
       GRANT SELECT, UPDATE ON ${t} TO ${role};
       GRANT INSERT (fsm) ON ${t} TO ${role};
       GRANT USAGE ON SEQUENCE "${schema}".gen_durable_id_seq TO ${role};
       COMMENT ON TABLE ${t} IS 'the instances';
       COMMENT ON COLUMN ${t}.state IS 'the state';`,
    );
    const before = {
      rows: await rowsOf(schema),
      catalog: await catalogOf(schema),
      at: await identityPosition(schema),
    };
    expect(before.rows).toHaveLength(4);
    expect(before.at).toBe('5');

    expect(await migrate({ pool, schema })).toEqual(
      Array.from({ length: LATEST_VERSION - 9 }, (_, i) => i + 10),
    );

    expect(await rowsOf(schema)).toEqual(before.rows);
    expect(await catalogOf(schema)).toEqual(before.catalog);
    expect(await identityPosition(schema)).toBe('5');
    const { rows } = await pool.query<{ id: string }>(
      `INSERT INTO ${t} (fsm, step, state, queue) VALUES ('new', 's', '{}', 'q') RETURNING id::text AS id`,
    );
    expect(rows[0]!.id).toBe('6');
    const kept = await pool.query<Record<string, unknown>>(
      `SELECT has_table_privilege($2, $1, 'SELECT') AS can_select, has_table_privilege($2, $1, 'UPDATE') AS can_update,
              has_table_privilege($2, $1, 'DELETE') AS can_delete,
              has_column_privilege($2, $1, 'fsm', 'INSERT') AS can_insert_fsm,
              has_column_privilege($2, $1, 'queue', 'INSERT') AS can_insert_queue,
              pg_get_serial_sequence($1, 'id') AS seq,
              has_sequence_privilege($2, pg_get_serial_sequence($1, 'id'), 'USAGE') AS can_use_seq,
              obj_description($1::regclass, 'pg_class') AS comment,
              col_description($1::regclass, (SELECT attnum FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'state')) AS state_comment`,
      [t, role],
    );
    expect(kept.rows[0]).toEqual({
      can_select: true,
      can_update: true,
      can_delete: false,
      can_insert_fsm: true,
      can_insert_queue: false,
      seq: `${schema}.gen_durable_id_seq`,
      can_use_seq: true,
      comment: 'the instances',
      state_comment: 'the state',
    });
  });

  it('leaves the table, its identity and indexes with their owner when another role migrates', async () => {
    const owner = `layout_owner_${randomBytes(4).toString('hex')}`;
    roles.push(owner);
    const schema = `layout_${randomBytes(5).toString('hex')}`;
    schemas.push(schema);
    await pool.query(
      `CREATE ROLE ${owner}; CREATE SCHEMA "${schema}" AUTHORIZATION ${owner};
       GRANT CREATE ON DATABASE "${new URL(url).pathname.slice(1)}" TO ${owner}`,
    );
    // Versions 1-9 as the owner, 10 as this (superuser) connection.
    const asOwner = new pg.Pool({ connectionString: url, max: 1 });
    asOwner.on('connect', (c) => void c.query(`SET ROLE ${owner}`));
    try {
      await migrate({ pool: asOwner, schema, toVersion: 9 });
    } finally {
      await asOwner.end();
    }
    await migrate({ pool, schema });
    const { rows } = await pool.query<{ relname: string; owner: string }>(
      `SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c
        WHERE c.relnamespace = $1::regnamespace AND c.relname LIKE 'gen_durable%'
          AND c.relname NOT IN ('gen_durable_migrations', 'gen_durable_migrations_pkey')
          AND (c.relname = 'gen_durable' OR c.relname = 'gen_durable_id_seq' OR c.relkind = 'i' AND c.relname IN (
            SELECT indexname FROM pg_indexes WHERE schemaname = $2 AND tablename = 'gen_durable'))`,
      [`"${schema}"`, schema],
    );
    expect(rows.length).toBeGreaterThanOrEqual(11); // the table, its sequence, 9 indexes
    expect(new Set(rows.map((r) => r.owner))).toEqual(new Set([owner]));
  });

  it('puts the columns every claim and outcome changes last, and leaves half of each page free', async () => {
    const schema = await schemaAt();
    const { rows } = await pool.query<{ name: string }>(
      `SELECT attname AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
        ORDER BY attnum`,
      [`"${schema}".gen_durable`],
    );
    expect(rows.map((r) => r.name).slice(-8)).toEqual([
      'result',
      'claim',
      'lease_expires_at',
      'updated_at',
      'status',
      'concurrency_slot',
      'locked_by',
      'finished_at',
    ]);
    const options = await pool.query<{ o: string[] }>(
      `SELECT reloptions AS o FROM pg_class WHERE oid = $1::regclass`,
      [`"${schema}".gen_durable`],
    );
    expect(options.rows[0]!.o).toEqual(['fillfactor=50']);
  });

  it('refuses a version it does not have, naming toVersion, before touching the database', async () => {
    const schema = `layout_${randomBytes(5).toString('hex')}`;
    for (const toVersion of [0, 1.5, LATEST_VERSION + 1]) {
      const error = await migrate({ pool, schema, toVersion }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path).toBe('toVersion');
    }
    const { rows } = await pool.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    expect(rows).toHaveLength(0);
  });
});

interface UpdateRecords {
  /** Heap updates of the table logged without a full-page image, and their lengths. */
  readonly lengths: number[];
  readonly locks: number;
}

/** Drains `jobs` no-op jobs on one node and returns the WAL records written for the table meanwhile. */
async function drainRecords(schema: string, jobs: number): Promise<UpdateRecords> {
  const client = createClient({ connectionString: url, schema });
  try {
    await client.insertAll(Array.from({ length: jobs }, (_, i) => ({ machine: noop, args: { i } })));
    const { rows } = await pool.query<{ lsn: string; node: string }>(
      `SELECT pg_current_wal_lsn()::text AS lsn, pg_relation_filenode($1::regclass)::text AS node`,
      [`"${schema}".gen_durable`],
    );
    const { lsn, node } = rows[0]!;
    // The same node id length in both schemas: the id is written into every claimed row.
    const cluster = await Cluster.join({
      connectionString: url,
      schema,
      nodeId: `layout-${randomBytes(4).toString('hex')}`,
      migrate: false,
      pollInterval: '1h',
      machines: [noop],
      queues: { main: { concurrency: 4 } },
    });
    try {
      await eventually(async () => {
        const done = await client.count({ status: 'done' });
        return done.reduce((a, r) => a + r.count, 0) === jobs || undefined;
      }, `${jobs} jobs done`);
    } finally {
      await cluster.stop({ timeout: 5_000 });
    }
    const records = await pool.query<{ type: string; length: number; fpi: number }>(
      `SELECT record_type AS type, record_length AS length, fpi_length AS fpi
         FROM pg_get_wal_records_info($1::pg_lsn, pg_current_wal_lsn())
        WHERE resource_manager = 'Heap' AND block_ref ~ ('/' || $2 || ' fork main blk ')`,
      [lsn, node],
    );
    return {
      lengths: records.rows.filter((r) => /UPDATE/.test(r.type) && r.fpi === 0).map((r) => r.length),
      locks: records.rows.filter((r) => r.type === 'LOCK').length,
    };
  } finally {
    await client.close();
  }
}

const walInspect = await pool
  .query('CREATE EXTENSION IF NOT EXISTS pg_walinspect')
  .then(() => true)
  .catch(() => false);

describe.runIf(walInspect)('what a step writes to the WAL (pg_walinspect)', () => {
  it('a claim and an outcome log over a fifth less than with the layout before migration 010', async () => {
    const jobs = 6;
    const before = await drainRecords(await schemaAt(9), jobs);
    const after = await drainRecords(await schemaAt(), jobs);
    const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
    // Two updates per job (the claim, the outcome); a checkpoint meanwhile may give a page's
    // first update a full-page image, which is left out.
    for (const r of [before, after]) {
      expect(r.lengths.length).toBeGreaterThanOrEqual(2 * jobs - 2);
      expect(r.lengths.length).toBeLessThanOrEqual(2 * jobs);
    }
    expect(mean(after.lengths)).toBeLessThan(mean(before.lengths) * 0.8);
    // Every new version stayed on its page: one lock per claim (the pick's), none for a move.
    expect(after.locks).toBe(jobs);
  });
});
