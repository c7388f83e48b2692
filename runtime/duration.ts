/**
 * Durations: milliseconds as a number, or a string such as `'500ms' '30s' '5m' '1h' '1d'`.
 */
import { z } from 'zod';

export type Duration = number | `${number}${DurationUnit}`;
type DurationUnit = 'ms' | 's' | 'm' | 'h' | 'd';

const UNIT_MS: Record<DurationUnit, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PATTERN = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/;

/** Parses a duration to whole milliseconds; returns an error message instead of throwing. */
export function parseDuration(value: unknown): number | string {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return 'must be a finite number of milliseconds';
    if (value < 0) return 'must not be negative';
    return Math.round(value);
  }
  if (typeof value === 'string') {
    const match = PATTERN.exec(value.trim());
    if (!match)
      return `"${value}" is not a duration (use milliseconds or e.g. '500ms', '30s', '5m', '1h', '1d')`;
    return Math.round(Number(match[1]) * UNIT_MS[match[2] as DurationUnit]);
  }
  return 'must be milliseconds or a duration string';
}

/** A zod schema accepting a duration and producing milliseconds. */
export const durationSchema = z.union([z.number(), z.string()]).transform((value, ctx): number => {
  const parsed = parseDuration(value);
  if (typeof parsed === 'string') {
    ctx.addIssue({ code: 'custom', message: parsed });
    return z.NEVER;
  }
  return parsed;
});
