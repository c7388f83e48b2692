/**
 * The service contract: every long-lived piece of a node has `start()` and `stop()`, both
 * idempotent and safe in any order. Periodic services wrap a `runOnce()` that tests call
 * directly.
 */
export interface Service {
  start(): void;
  stop(): Promise<void>;
}

/**
 * A service that runs `runOnce()` at once when started, then `intervalMs` after each round
 * ends. Every `start()` and `stop()` opens a new epoch; a round or timer of an older epoch
 * never schedules another, so a `start()` that follows a `stop()` nobody awaited (a leader
 * hand-off does exactly that) runs one timer chain, never two.
 */
export abstract class PeriodicService implements Service {
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  #started = false;
  #epoch = 0;
  /** `runNow()` was asked while a round ran: one more round follows it at once. */
  #again = false;

  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
  }

  /** Between `start()` and `stop()`. */
  protected get started(): boolean {
    return this.#started;
  }

  /** One round of the service's work. */
  abstract runOnce(): Promise<unknown>;

  protected abstract onError(error: unknown): void;

  start(): void {
    if (this.#started) return;
    this.#started = true;
    const epoch = ++this.#epoch;
    // A round of an older epoch may still be running: the new chain starts after it.
    const previous = this.#running ?? Promise.resolve();
    void previous.then(() => this.#schedule(epoch, 0));
  }

  /**
   * Runs a round as soon as possible instead of at the next interval (while started): at
   * once when idle, right after the current round when one is running. Calls coalesce.
   */
  runNow(): void {
    if (!this.#started) return;
    if (this.#running) this.#again = true;
    else this.#schedule(this.#epoch, 0);
  }

  #schedule(epoch: number, delayMs: number): void {
    if (epoch !== this.#epoch) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (epoch !== this.#epoch) return;
      this.#again = false;
      const round = this.runOnce()
        .catch((error: unknown) => this.onError(error))
        .finally(() => {
          if (this.#running === round) this.#running = undefined;
          this.#schedule(epoch, this.#again ? 0 : this.#intervalMs);
        });
      this.#running = round;
    }, delayMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#started = false;
    this.#epoch++;
    clearTimeout(this.#timer);
    await this.#running;
  }
}
