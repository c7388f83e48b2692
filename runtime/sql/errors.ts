/**
 * Postgres errors, classified in one place by SQLSTATE.
 *
 * - data errors (class 22: bad value, out of range; class 23: constraint violation) come
 *   from the values of one statement: retrying the same values fails the same way;
 * - transient errors (serialization failure, deadlock, connection loss, shutdown) pass.
 */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.length === 5 ? code : undefined;
}

export function isDataError(error: unknown): boolean {
  const code = sqlState(error);
  return code !== undefined && (code.startsWith('22') || code.startsWith('23'));
}

export function isTransientError(error: unknown): boolean {
  const code = sqlState(error);
  if (code === undefined) return true; // connection errors from the driver carry no SQLSTATE
  return code === '40001' || code === '40P01' || code.startsWith('08') || code.startsWith('57P');
}
