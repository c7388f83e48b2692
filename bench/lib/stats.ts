/** Order statistics for the bench's repeated measurements. */

/** The middle item of `items` ordered by `key` (of an even count, the upper of the two). */
export function middleBy<T>(items: readonly T[], key: (item: T) => number): T {
  return [...items].sort((a, b) => key(a) - key(b))[items.length >> 1]!;
}

/** The median of `xs`, taken as `middleBy` takes it. */
export const median = (xs: readonly number[]): number => middleBy(xs, (x) => x);
