/**
 * The service contract: every long-lived piece of a node has `start()` and `stop()`, both
 * idempotent and safe in any order. Periodic services wrap a `runOnce()` that tests call
 * directly.
 */
export interface Service {
  start(): void;
  stop(): Promise<void>;
}

export abstract class PeriodicService implements Service {
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  #started = false;

  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
  }

  /** One round of the service's work. */
  abstract runOnce(): Promise<unknown>;

  protected abstract onError(error: unknown): void;

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#schedule(0);
  }

  #schedule(delayMs: number): void {
    if (!this.#started) return;
    this.#timer = setTimeout(() => {
      this.#running = this.runOnce()
        .catch((error: unknown) => this.onError(error))
        .finally(() => {
          this.#running = undefined;
          this.#schedule(this.#intervalMs);
        });
    }, delayMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#started = false;
    clearTimeout(this.#timer);
    await this.#running;
  }
}
