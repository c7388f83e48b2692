/**
 * The feeder of one queue on one node: claims work only for free slots (backpressure) and
 * hands it to the executor.
 *
 * Modes:
 * - idle: nothing known to be waiting; no queries. Leaves idle on a wake-up (a notification,
 *   a local due timer, a listener reconnect, the slow safety poll).
 * - backlogged: the last claim filled its batch, so more work is probably waiting; every
 *   completion (slots freed by a commit) claims again at once.
 * A claim that meets fewer rows than it asked for means the queue has no more due work now:
 * idle. Rows a claim put off (throttled by a rate limit) count as met; when they fall due is
 * the node's to tell (`wakeIn`, as for any work due later). Rows held back by a busy
 * concurrency key are woken by the end of that key's step.
 *
 * Timed wake-ups: delayed work is woken by the leader's stager (a notification when it falls
 * due). The feeder keeps one local timer only for due times this node learnt by itself (its
 * own retries), for the earliest of them: no look-ups of its own.
 */
import { MAX_TIMER_MS } from './duration.js';
import type { ClaimedRow } from './sql/claim.js';
import type { Service } from './service.js';

export interface FeederOptions {
  readonly queue: string;
  readonly concurrency: number;
  readonly batchSize: number;
  readonly pollIntervalMs: number;
  /**
   * Claims up to `limit` rows. `full`: the claim met as many rows as it asked for (some may
   * have been put off by a rate limit), so more may be due.
   */
  readonly claim: (limit: number) => Promise<{ rows: ClaimedRow[]; full: boolean }>;
  readonly dispatch: (rows: ClaimedRow[]) => void;
  readonly onError: (error: unknown) => void;
}

export class Feeder implements Service {
  readonly queue: string;
  readonly #o: FeederOptions;
  #inFlight = 0;
  #wanted = false;
  #backlog = false;
  #picking: Promise<void> | undefined;
  #running = false;
  #poll: NodeJS.Timeout | undefined;
  #dueTimer: NodeJS.Timeout | undefined;
  #dueAt = Number.POSITIVE_INFINITY;
  #retryTimer: NodeJS.Timeout | undefined;

  constructor(options: FeederOptions) {
    this.#o = options;
    this.queue = options.queue;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#poll = setInterval(() => this.wake(), this.#o.pollIntervalMs);
    this.#poll.unref();
    this.wake();
  }

  /** Work may be due now. */
  wake(): void {
    this.#wanted = true;
    this.#pump();
  }

  /**
   * Work this node made becomes due in `delayMs`: claim then. Only the earliest such time is
   * kept; later ones are the stager's to wake.
   */
  wakeIn(delayMs: number): void {
    if (!this.#running) return;
    if (delayMs <= 0) return this.wake();
    const ms = Math.min(delayMs, MAX_TIMER_MS - 5);
    const at = Date.now() + ms;
    if (at >= this.#dueAt) return;
    clearTimeout(this.#dueTimer);
    this.#dueAt = at;
    this.#dueTimer = setTimeout(() => {
      this.#dueAt = Number.POSITIVE_INFINITY;
      this.wake();
    }, ms + 5);
    this.#dueTimer.unref();
  }

  /** `n` claimed steps were committed (or given back): their slots are free. */
  completed(n: number): void {
    this.#inFlight -= n;
    if (this.#backlog) this.#wanted = true;
    this.#pump();
  }

  #pump(): void {
    if (!this.#running || this.#picking || !this.#wanted) return;
    if (this.#inFlight >= this.#o.concurrency) return;
    this.#picking = this.#loop().finally(() => {
      this.#picking = undefined;
      this.#pump();
    });
  }

  async #loop(): Promise<void> {
    while (this.#running && this.#wanted && this.#inFlight < this.#o.concurrency) {
      this.#wanted = false;
      const limit = Math.min(this.#o.concurrency - this.#inFlight, this.#o.batchSize);
      let rows: ClaimedRow[];
      let full: boolean;
      try {
        ({ rows, full } = await this.#o.claim(limit));
      } catch (error) {
        this.#o.onError(error);
        clearTimeout(this.#retryTimer);
        this.#retryTimer = setTimeout(() => this.wake(), 1_000);
        this.#retryTimer.unref();
        return;
      }
      this.#backlog = full;
      if (this.#backlog) this.#wanted = true;
      if (rows.length === 0) continue;
      this.#inFlight += rows.length;
      this.#o.dispatch(rows);
    }
  }

  /** Stops claiming; steps already dispatched carry on. */
  async stop(): Promise<void> {
    this.#running = false;
    clearInterval(this.#poll);
    clearTimeout(this.#dueTimer);
    clearTimeout(this.#retryTimer);
    this.#dueAt = Number.POSITIVE_INFINITY;
    await this.#picking;
  }
}
