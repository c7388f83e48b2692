/**
 * Errors of statements, classified in one place: which ones are worth sending again as they
 * were (transient), and which mean the values sent are at fault.
 */
import { loadedPg } from '../pg.js';

/** The SQLSTATE of an error Postgres reported, or undefined for any other error. */
export function sqlState(error: unknown): string | undefined {
  const pg = loadedPg();
  if (!pg || !(error instanceof pg.DatabaseError)) return undefined;
  return typeof error.code === 'string' && /^[0-9A-Z]{5}$/.test(error.code) ? error.code : undefined;
}

/**
 * SQLSTATEs after which the same statement may well succeed: connection exceptions (class
 * 08), insufficient resources (53: too many connections, out of memory, disk full), the
 * server shutting down or starting (57P01-57P03), a cancelled statement (57014), lock and
 * serialization failures (40001, 40P01, 55P03), a read-only server during a failover
 * (25006), and system I/O errors (58).
 */
const TRANSIENT_CLASSES = new Set(['08', '53', '58']);
const TRANSIENT_CODES = new Set(['40001', '40P01', '55P03', '57014', '57P01', '57P02', '57P03', '25006']);

/** Node's socket and DNS errors: the server is unreachable for now. */
const TRANSIENT_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
]);

/** What `pg` throws when a connection breaks or cannot be had, without a code of its own. */
const TRANSIENT_MESSAGE =
  /connection terminated|connection error|not queryable|timeout exceeded when trying to connect|connection ended/i;

/**
 * Whether an error says nothing about the statement itself: the connection or the server
 * failed, or the statement lost a race (deadlock, serialization). Retrying the same values
 * is safe and may succeed. Every other error (syntax, undefined object, data, constraint,
 * internal errors, errors the client raised before sending) would recur: callers isolate
 * the values that cause it instead of retrying.
 */
export function isTransient(error: unknown): boolean {
  const state = sqlState(error);
  if (state !== undefined) return TRANSIENT_CLASSES.has(state.slice(0, 2)) || TRANSIENT_CODES.has(state);
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && TRANSIENT_ERRNO.has(code)) return true;
  return TRANSIENT_MESSAGE.test(error.message);
}

/**
 * A claim refused by `gen_durable_concurrency_active`: two pickers admitted steps of one key
 * into one slot at once. Not an error of the data: the pick is retried (it then sees the
 * other's claim).
 */
export function isConcurrencyConflict(error: unknown): boolean {
  return (
    sqlState(error) === '23505' &&
    (error as { constraint?: unknown }).constraint === 'gen_durable_concurrency_active'
  );
}

/**
 * The plain claim met a row with a concurrency key or a rate limit: it may not execute
 * without the guarded claim's admission (a `concurrency_slot`).
 */
export function needsGuardedClaim(error: unknown): boolean {
  return (
    sqlState(error) === '23514' &&
    (error as { constraint?: unknown }).constraint === 'gen_durable_concurrency_slot'
  );
}
