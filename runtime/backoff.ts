/** The default retry delay: `min(1s · 2^attempt, 5min)` plus up to 10% jitter. */
export const BACKOFF_BASE_MS = 1_000;
export const BACKOFF_CAP_MS = 300_000;

export function defaultBackoff(attempt: number, random: () => number = Math.random): number {
  const exp = Math.min(BACKOFF_BASE_MS * 2 ** Math.max(0, attempt), BACKOFF_CAP_MS);
  return Math.round(exp + exp * 0.1 * random());
}

export const DEFAULT_MAX_ATTEMPTS = 20;
