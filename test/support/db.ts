/**
 * Per-file database isolation: each test file gets its own freshly migrated schema, dropped
 * when the file ends, so files run in parallel against one database.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, inject } from 'vitest';
import { migrate } from '../../migrations/migrate.js';
import { eventually } from './eventually.js';

export { eventually };

export interface TestDb {
  readonly url: string;
  readonly schema: string;
  /** A pool for the test's own queries (closed after the file). */
  readonly pool: pg.Pool;
}

export function useTestSchema(prefix = 't'): TestDb {
  const url = inject('databaseUrl');
  const schema = `${prefix}_${randomBytes(5).toString('hex')}`;
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  beforeAll(async () => {
    await migrate({ pool, schema });
  });
  afterAll(async () => {
    await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await pool.end();
  });
  return { url, schema, pool };
}

/**
 * A query that is retried until the server answers (a Postgres of the test's own, restarted
 * mid-test, may still be starting up); resolves with the rows.
 */
export async function queryAnswered<T extends pg.QueryResultRow>(
  pool: pg.Pool,
  text: string,
  values: unknown[] = [],
): Promise<T[]> {
  return eventually(async () => {
    try {
      return (await pool.query<T>(text, values)).rows;
    } catch {
      return undefined;
    }
  }, `an answer to ${text}`);
}

/** Inserts `n` runnable rows of machine `fsm` (step `perform`, empty state) into `queue`. */
export async function seedRunnable(db: TestDb, queue: string, n: number, fsm = 'm'): Promise<void> {
  await db.pool.query(
    `INSERT INTO "${db.schema}".gen_durable (fsm, step, state, queue, max_attempts)
     SELECT $3, 'perform', '{}'::jsonb, $1, 5 FROM generate_series(1, $2)`,
    [queue, n, fsm],
  );
}
