/** Flag parsing shared by the bench scripts. */

/** `raw` as a positive integer, or a message naming the flag (and the usage) and exit code 2. */
export function positiveInt(name: string, raw: string, usage: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a positive integer, got "${raw}"\n${usage}`);
    process.exit(2);
  }
  return n;
}
