/**
 * Postgres errors, classified in one place by SQLSTATE.
 *
 * Data errors (class 22: bad value, out of range; class 23: constraint violation) come from
 * the values of one statement: retrying the same values fails the same way. Everything
 * else (connection loss, shutdown, serialization failure, deadlock) is treated as passing
 * and retried by the caller.
 */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.length === 5 ? code : undefined;
}

export function isDataError(error: unknown): boolean {
  const code = sqlState(error);
  return code !== undefined && (code.startsWith('22') || code.startsWith('23'));
}
