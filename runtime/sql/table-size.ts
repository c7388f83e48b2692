/**
 * How large each schema's instance table was when a statement last read it, as a size
 * class: the statements whose generic plan is only safe near the size it was made at are
 * prepared under a name that carries the class (`statement(..., { prepared: 'by-size' })`).
 *
 * Postgres makes a generic plan from the table's size at the time (after five executions
 * planned with their values) and keeps it until the table's statistics change. A plan that
 * scans a table sequentially is only chosen while the scan is cheaper than the index path;
 * the class changes each time the table doubles (or halves), so such a plan is never used on
 * a table more than twice the size it was made for: a new name, five custom plans, and a
 * generic plan of the new size. A reading older than `FRESH_MS` is no reading: the statement
 * then runs unprepared (planned with its values, as at the start), and reads the size again.
 */

/** How long a reading of the table's size stands. */
export const FRESH_MS = 1_000;

/** Below this many bytes (8 pages) the table is one class. */
const SMALLEST = 8 * 8192;

interface Reading {
  readonly sizeClass: number;
  readonly at: number;
}

/**
 * Per connection pool (or client) the pick ran on, per schema: two databases may hold
 * schemas of one name, and each pool reaches one database.
 */
const readings = new WeakMap<object, Map<string, Reading>>();

/** The class of a table of `bytes`: 0 up to 8 pages, then one per doubling. */
export function sizeClassOf(bytes: number): number {
  return bytes < SMALLEST ? 0 : Math.floor(Math.log2(bytes / SMALLEST)) + 1;
}

/** `schema`'s instance table, read through `db`, measured `bytes` (its heap, `pg_relation_size`) at `at`. */
export function noteTableSize(db: object, schema: string, bytes: number, at = performance.now()): void {
  if (!Number.isFinite(bytes) || bytes < 0) return;
  let bySchema = readings.get(db);
  if (!bySchema) readings.set(db, (bySchema = new Map<string, Reading>()));
  bySchema.set(schema, { sizeClass: sizeClassOf(bytes), at });
}

/** The size class of `schema`'s instance table as read through `db`, if read within `FRESH_MS`. */
export function freshSizeClass(db: object, schema: string, now = performance.now()): number | undefined {
  const reading = readings.get(db)?.get(schema);
  return reading !== undefined && now - reading.at <= FRESH_MS ? reading.sizeClass : undefined;
}
