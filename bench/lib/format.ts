/** Number formatting and aligned tables for the bench's printed reports. */
export const num = (n: number | undefined, digits = 0): string =>
  n === undefined || !Number.isFinite(n)
    ? 'n/a'
    : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

export const ratio = (a: number | undefined, b: number | undefined): string =>
  a === undefined || b === undefined || b === 0 ? 'n/a' : `${num(a / b, 2)}×`;

/** Prints rows under a header, each column as wide as its widest cell (numbers right-aligned). */
export function printTable(header: readonly string[], rows: ReadonlyArray<readonly string[]>): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join('  ')
      .trimEnd();
  console.log(`  ${line(header)}`);
  for (const r of rows) console.log(`  ${line(r)}`);
}
