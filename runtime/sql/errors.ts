/** Errors of statements, classified in one place (by SQLSTATE where there is one). */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.length === 5 ? code : undefined;
}

/**
 * An error that sending the same values again reproduces: a data or constraint error (class
 * 22, 23), a value over a limit (class 54), or one the client threw before sending
 * (RangeError, TypeError: e.g. a batch too large to serialise). Anything else (connection
 * loss, shutdown, serialization failure, deadlock) passes and is retried as it was.
 */
export function isDataError(error: unknown): boolean {
  const code = sqlState(error);
  if (code !== undefined) return code.startsWith('22') || code.startsWith('23') || code.startsWith('54');
  return error instanceof RangeError || error instanceof TypeError;
}
