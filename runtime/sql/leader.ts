/**
 * Statements of leader election: a session advisory lock on one 64-bit key per install.
 *
 * The key (`leaderLockKey`) is the first 8 bytes, as a signed big-endian integer, of
 * `sha256("gen_durable:leader\0" + database + "\0" + schema)`: two installs (another schema
 * in the same database, or the same schema name in another database of the same server)
 * never contend for one lock, and anything that knows the database and schema can compute
 * it. Postgres shows a bigint advisory lock in `pg_locks` as `classid` (high 32 bits),
 * `objid` (low 32 bits) and `objsubid = 1`.
 */
import { createHash } from 'node:crypto';
import { type Queryable, run, statement } from './db.js';

export function leaderLockKey(database: string, schema: string): bigint {
  const digest = createHash('sha256').update(`gen_durable:leader\u0000${database}\u0000${schema}`).digest();
  return digest.readBigInt64BE(0);
}

/** The key's halves as `pg_locks` shows them (unsigned 32-bit, as text for the oid columns). */
export function lockParts(key: bigint): [string, string] {
  const unsigned = BigInt.asUintN(64, key);
  return [(unsigned >> 32n).toString(), (unsigned & 0xffff_ffffn).toString()];
}

/** The `pg_locks` rows of the lock whose halves are the parameters `$<classid>` and `$<objid>`. */
export function leaderLockRows(classid = 1, objid = 2): string {
  return `FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND classid = $${classid}::oid
    AND objid = $${objid}::oid AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`;
}
const LOCK_ROWS = leaderLockRows();

/**
 * Prepares a dedicated session for the lock: its database (for the key), and server-side
 * TCP keepalives, so that Postgres ends the session of a leader whose host vanished (and
 * with it the lock) in about `idle + interval × count` seconds rather than the OS default
 * of hours. Ignored on Unix-domain sockets, where a dead peer is seen at once.
 */
export async function prepareLeaderSession(
  db: Queryable,
  keepalive: { idleS: number; intervalS: number; count: number },
): Promise<{ database: string; pid: number }> {
  const stmt = statement(
    '',
    'leader_session',
    `SELECT current_database() AS database, pg_backend_pid() AS pid,
       set_config('tcp_keepalives_idle', $1, false),
       set_config('tcp_keepalives_interval', $2, false),
       set_config('tcp_keepalives_count', $3, false)`,
  );
  const [row] = await run<{ database: string; pid: number }>(db, stmt, [
    String(keepalive.idleS),
    String(keepalive.intervalS),
    String(keepalive.count),
  ]);
  return { database: row!.database, pid: row!.pid };
}

/** Takes the lock for this session if nobody holds it; never waits. */
export async function tryLeaderLock(db: Queryable, key: bigint): Promise<boolean> {
  const stmt = statement('', 'leader_try', `SELECT pg_try_advisory_lock($1::bigint) AS locked`);
  const [row] = await run<{ locked: boolean }>(db, stmt, [key.toString()]);
  return row?.locked === true;
}

/** Whether this session (still) holds the lock: a round trip and a look at `pg_locks`. */
export async function holdsLeaderLock(db: Queryable, key: bigint): Promise<boolean> {
  const stmt = statement(
    '',
    'leader_held',
    `SELECT EXISTS (SELECT 1 ${LOCK_ROWS} AND pid = pg_backend_pid()) AS held`,
  );
  const [row] = await run<{ held: boolean }>(db, stmt, lockParts(key));
  return row?.held === true;
}

/** Gives the lock up (before a clean close, so that a campaigner can take it at once). */
export async function releaseLeaderLock(db: Queryable, key: bigint): Promise<boolean> {
  const stmt = statement('', 'leader_release', `SELECT pg_advisory_unlock($1::bigint) AS released`);
  const [row] = await run<{ released: boolean }>(db, stmt, [key.toString()]);
  return row?.released === true;
}

/** Backend pids of the sessions holding the lock, as Postgres sees them (0 or 1; for operators and tests). */
export async function leaderLockHolders(db: Queryable, key: bigint): Promise<number[]> {
  const stmt = statement('', 'leader_holders', `SELECT pid ${LOCK_ROWS} ORDER BY pid`);
  return (await run<{ pid: number }>(db, stmt, lockParts(key))).map((r) => r.pid);
}

/**
 * The sessions holding the install's leader lock, with their `application_name` (a node's
 * elector names its session `gen_durable elector <node id>` unless the user named the
 * connections) — for operators (`gen-durable status`). Computes the key from the current
 * database and `schema`.
 */
export async function leaderSessions(
  db: Queryable,
  schema: string,
): Promise<Array<{ pid: number; applicationName: string }>> {
  const database = await run<{ database: string }>(
    db,
    statement('', 'current_database', `SELECT current_database() AS database`),
    [],
  );
  const key = leaderLockKey(database[0]!.database, schema);
  const stmt = statement(
    '',
    'leader_sessions',
    `SELECT l.pid, coalesce(a.application_name, '') AS "applicationName"
     FROM (SELECT pid ${LOCK_ROWS}) l LEFT JOIN pg_stat_activity a ON a.pid = l.pid ORDER BY l.pid`,
  );
  return run(db, stmt, lockParts(key));
}
