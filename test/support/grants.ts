/**
 * Watching what token buckets grant: a trigger of the test's schema records every grant a
 * bucket makes (its time, size and the connection that made it), and `worstExcess` checks
 * the token-bucket bound over that record.
 */
import type pg from 'pg';

export interface Grant {
  readonly name: string;
  readonly partition: string;
  readonly at: Date;
  readonly granted: number;
  /** `application_name` of the connection that granted. */
  readonly app: string;
}

/** Creates `<schema>.grants` and the trigger that fills it (idempotent). */
export async function logGrants(pool: pg.Pool, schema: string): Promise<void> {
  const s = `"${schema}"`;
  await pool.query(`
    CREATE TABLE IF NOT EXISTS ${s}.grants (name text, partition text, at timestamptz, granted int, app text);
    CREATE OR REPLACE FUNCTION ${s}.log_grant() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.granted > 0 THEN
        INSERT INTO ${s}.grants
        VALUES (NEW.name, NEW.partition, NEW.refreshed_at, NEW.granted, current_setting('application_name'));
      END IF;
      RETURN NEW;
    END $$;
    CREATE OR REPLACE TRIGGER log_grant AFTER INSERT OR UPDATE ON ${s}.gen_durable_rate_buckets
      FOR EACH ROW EXECUTE FUNCTION ${s}.log_grant();`);
}

/** The grants of limit `name` recorded so far, in time order. */
export async function grantsOf(pool: pg.Pool, schema: string, name: string): Promise<Grant[]> {
  const { rows } = await pool.query<Grant>(`SELECT * FROM "${schema}".grants WHERE name = $1 ORDER BY at`, [
    name,
  ]);
  return rows;
}

/**
 * The most any window [t_i, t_j] between two grants took beyond what a bucket of `burst`
 * refilling `allowed` per `periodMs` allows: <= 0 when the bound held everywhere.
 */
export function worstExcess(log: readonly Grant[], allowed: number, periodMs: number, burst: number): number {
  let worst = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < log.length; i++) {
    let taken = 0;
    for (let j = i; j < log.length; j++) {
      taken += log[j]!.granted;
      const elapsed = log[j]!.at.getTime() - log[i]!.at.getTime();
      worst = Math.max(worst, taken - (burst + (allowed * elapsed) / periodMs));
    }
  }
  return worst;
}
