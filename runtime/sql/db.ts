/**
 * What the SQL modules need from `pg`: something to query (a pool, a client, the caller's
 * transaction) and a schema-qualified, prepared-once statement per schema.
 */
import { createHash } from 'node:crypto';
import type { QueryResultRow } from 'pg';
import { loadPg } from '../pg.js';
import { ValidationError } from '../errors.js';
import { freshSizeClass } from './table-size.js';

export interface Queryable {
  query<R extends QueryResultRow = QueryResultRow>(config: {
    name?: string;
    text: string;
    values?: unknown[];
  }): Promise<{ rows: R[]; rowCount: number | null }>;
}

const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export function validateSchemaName(schema: unknown, path = 'schema'): string {
  if (typeof schema !== 'string' || !SCHEMA_PATTERN.test(schema)) {
    throw new ValidationError(
      'invalid_input',
      path,
      `"${String(schema)}" is not a valid schema name (letters, digits, _; at most 63)`,
    );
  }
  return schema;
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * A statement text with `:schema` resolved. A prepared statement is named, so that each
 * connection parses it once (and Postgres may keep a generic plan for it); an unprepared one
 * is parsed and planned afresh with its actual parameter values on every execution (see
 * `flushOutcomes` for why that matters). `bySize`: prepared under a name per size class of
 * the schema's instance table while a fresh reading of it through the same pool exists, else
 * unprepared (see `table-size.ts`).
 */
export interface Statement {
  readonly name: string | undefined;
  readonly text: string;
  readonly bySize?: { readonly schema: string; readonly names: readonly string[] };
}

const cache = new Map<string, Statement>();

/** Classes beyond this (a heap of 8 TiB and more) share the last one's name. */
const MAX_SIZE_CLASS = 28;

export function statement(
  schema: string,
  id: string,
  text: string,
  /** Default true; `'by-size'`: see `Statement.bySize`. */
  options: { prepared?: boolean | 'by-size' } = {},
): Statement {
  const prepared = options.prepared ?? true;
  // Keyed by the text too: two statements sharing an id (or a text built from parameters)
  // never answer with each other's SQL.
  const key = `${schema}\u0000${id}\u0000${String(prepared)}\u0000${text}`;
  let found = cache.get(key);
  if (!found) {
    const resolved = text.replaceAll(':schema', quoteIdent(schema));
    const hash = createHash('sha1').update(resolved).digest('hex').slice(0, 12);
    const name = `gd_${id}_${hash}`;
    found =
      prepared === 'by-size'
        ? {
            name: undefined,
            text: resolved,
            bySize: { schema, names: Array.from({ length: MAX_SIZE_CLASS + 1 }, (_, c) => `${name}_s${c}`) },
          }
        : { name: prepared ? name : undefined, text: resolved };
    cache.set(key, found);
  }
  return found;
}

/** The name `stmt` runs under on `db` now: its own, its size class's, or none (unprepared). */
function nameOf(stmt: Statement, db: Queryable): string | undefined {
  if (!stmt.bySize) return stmt.name;
  const sizeClass = freshSizeClass(db, stmt.bySize.schema);
  return sizeClass === undefined ? undefined : stmt.bySize.names[Math.min(sizeClass, MAX_SIZE_CLASS)];
}

export async function run<R extends QueryResultRow>(
  db: Queryable,
  stmt: Statement,
  values: unknown[],
): Promise<R[]> {
  const name = nameOf(stmt, db);
  const result = await db.query<R>(name ? { name, text: stmt.text, values } : { text: stmt.text, values });
  return result.rows;
}

/**
 * Runs `fn` in a transaction: on a connection of its own when `db` is a pool, else on `db`
 * itself (a client). A failed transaction is rolled back; a pooled connection that failed
 * is discarded rather than returned to the pool.
 */
export async function inTransaction<T>(db: Queryable, fn: (tx: Queryable) => Promise<T>): Promise<T> {
  const client = db instanceof loadPg().Pool ? await db.connect() : undefined;
  const tx: Queryable = client ?? db;
  let failed: Error | undefined;
  try {
    await tx.query({ text: 'BEGIN' });
    const result = await fn(tx);
    await tx.query({ text: 'COMMIT' });
    return result;
  } catch (error) {
    failed = error instanceof Error ? error : new Error(String(error));
    await tx.query({ text: 'ROLLBACK' }).catch(() => undefined);
    throw error;
  } finally {
    client?.release(failed);
  }
}
