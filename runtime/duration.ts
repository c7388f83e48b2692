/**
 * Durations: milliseconds as a number, or a string such as `'500ms' '30s' '5m' '1h' '1d'`.
 * Delays are bounded (100 years) so that every one is a valid timestamp; intervals that
 * drive Node.js timers are bounded by what a timer can wait (longer ones would fire at once).
 */
import { z } from 'zod';

export type Duration = number | `${number}${DurationUnit}`;
type DurationUnit = 'ms' | 's' | 'm' | 'h' | 'd';

/** The longest delay anything can be scheduled by: 100 years. */
export const MAX_DELAY_MS = 100 * 365.25 * 86_400_000;
/** The longest interval a Node.js timer can wait (longer ones fire at once). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

const UNIT_MS: Record<DurationUnit, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PATTERN = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;

/** Parses a duration to whole milliseconds; returns an error message instead of throwing. */
export function parseDuration(value: unknown, max = MAX_DELAY_MS): number | string {
  let ms: number;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return 'must be a finite number of milliseconds';
    ms = Math.round(value);
  } else if (typeof value === 'string') {
    const match = PATTERN.exec(value.trim());
    if (!match)
      return `"${value}" is not a duration (use milliseconds or e.g. '500ms', '30s', '5m', '1h', '1d')`;
    ms = Math.round(Number(match[1]) * UNIT_MS[match[2] as DurationUnit]);
  } else {
    return 'must be milliseconds or a duration string';
  }
  if (ms < 0) return 'must not be negative';
  if (ms > max) return `must be at most ${max}ms`;
  return ms;
}

function durationWithin(min: number, max: number) {
  return z.union([z.number(), z.string()]).transform((value, ctx): number => {
    const parsed = parseDuration(value, max);
    if (typeof parsed === 'string') {
      ctx.addIssue({ code: 'custom', message: parsed });
      return z.NEVER;
    }
    if (parsed < min) {
      ctx.addIssue({ code: 'custom', message: `must be at least ${min}ms` });
      return z.NEVER;
    }
    return parsed;
  });
}

/** A delay (0 to 100 years), in milliseconds. */
export const durationSchema = durationWithin(0, MAX_DELAY_MS);

/** An interval that drives a timer (1ms to about 24.8 days), in milliseconds. */
export const timerDurationSchema = durationWithin(1, MAX_TIMER_MS);
