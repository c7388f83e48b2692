/**
 * The migrator. Numbered SQL files next to this module (`001_instances.sql`, …) are applied
 * in order inside one transaction that holds an advisory lock derived from the schema name,
 * so any number of processes may call `migrate()` at once: one applies, the others wait and
 * then find nothing to do. The Postgres schema is created when missing, and the version
 * reached is recorded in `gen_durable_migrations`.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { loadPg } from '../runtime/pg.js';
import { GenDurableError, ValidationError } from '../runtime/errors.js';
import { quoteIdent, validateSchemaName } from '../runtime/sql/db.js';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export interface MigrateOptions {
  readonly connectionString?: string;
  readonly pool?: pg.Pool;
  readonly schema?: string;
  /**
   * Apply migrations up to and including this version, not beyond (default: the latest).
   * For upgrades in stages, and for testing one migration on data shaped by the ones before it.
   */
  readonly toVersion?: number;
}

const MIGRATION_FILE = /^(\d{3})_([a-z0-9_]+)\.sql$/;
/** First key of the two-key advisory lock; the second is a hash of the schema name. */
const LOCK_CLASS = 0x6764_7572; // 'gdur'

export function loadMigrations(): Migration[] {
  const dir = fileURLToPath(new URL('.', import.meta.url));
  return readdirSync(dir)
    .map((file) => MIGRATION_FILE.exec(file))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ version: Number(m[1]), name: m[2]!, sql: readFileSync(`${dir}/${m[0]}`, 'utf8') }))
    .sort((a, b) => a.version - b.version);
}

export const LATEST_VERSION = Math.max(...loadMigrations().map((m) => m.version));

/** Applies pending migrations; returns the versions applied by this call. */
export async function migrate(options: MigrateOptions = {}): Promise<number[]> {
  const schema = validateSchemaName(options.schema ?? 'public');
  const target = options.toVersion ?? LATEST_VERSION;
  if (!Number.isInteger(target) || target < 1 || target > LATEST_VERSION) {
    throw new ValidationError(
      'invalid_input',
      'toVersion',
      `${String(options.toVersion)} is not a schema version (an integer from 1 to ${LATEST_VERSION})`,
    );
  }
  const ownPool = options.pool
    ? undefined
    : new (loadPg().Pool)({ connectionString: options.connectionString, max: 1 });
  const pool = options.pool ?? ownPool!;
  const client = await pool.connect();
  const q = quoteIdent(schema);
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_CLASS, `migrate:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${q}.gen_durable_migrations (
         version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    const { rows } = await client.query<{ v: number | null }>(
      `SELECT max(version) AS v FROM ${q}.gen_durable_migrations`,
    );
    const current = rows[0]?.v ?? 0;
    const applied: number[] = [];
    for (const migration of loadMigrations()) {
      if (migration.version <= current || migration.version > target) continue;
      await client.query(migration.sql.replaceAll(':schema', q));
      await client.query(`INSERT INTO ${q}.gen_durable_migrations (version, name) VALUES ($1, $2)`, [
        migration.version,
        migration.name,
      ]);
      applied.push(migration.version);
    }
    await client.query('COMMIT');
    return applied;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw new GenDurableError('migration_failed', `migrating schema ${schema} failed: ${String(error)}`, {
      cause: error,
    });
  } finally {
    client.release();
    await ownPool?.end();
  }
}
