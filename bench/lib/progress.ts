/**
 * A progress bar on stderr for long runs: redrawn in place on a terminal, a line every 10%
 * otherwise (CI logs).
 */
export class Progress {
  readonly #label: string;
  readonly #total: number;
  readonly #tty = process.stderr.isTTY;
  #lastTenth = -1;

  constructor(label: string, total: number) {
    this.#label = label;
    this.#total = total;
  }

  update(done: number): void {
    const fraction = Math.max(0, Math.min(1, done / this.#total));
    if (this.#tty) {
      const width = 30;
      const filled = Math.round(fraction * width);
      process.stderr.write(
        `\r· ${this.#label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}%`,
      );
      return;
    }
    const tenth = Math.floor(fraction * 10);
    if (tenth > this.#lastTenth) {
      this.#lastTenth = tenth;
      process.stderr.write(`· ${this.#label} ${tenth * 10}%\n`);
    }
  }

  done(): void {
    if (this.#tty) process.stderr.write('\n');
  }
}
