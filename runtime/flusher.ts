/**
 * Group commit: step results from every thread of every queue gather in one buffer; a flush
 * commits up to `maxBatch` of them in one statement (see `flushOutcomes`). While a flush is
 * in flight the next batch gathers, and the next flush starts the moment the previous one
 * ends, so there is no fixed added delay at low load and large batches at high load.
 *
 * A flush that fails (connection lost, Postgres restarting) is retried with backoff with
 * the same outcomes. That is safe: each outcome is guarded by its claim, so one that was in
 * fact committed before the failure does not apply twice.
 */
import { assertNever } from './outcome.js';
import type { StepResult } from './executor.js';
import { ATTEMPT, type OutcomeRow, flushOutcomes } from './sql/loop.js';
import type { Queryable } from './sql/db.js';
import type { Service } from './service.js';

export interface FlushEntry {
  readonly id: string;
  readonly claim: string;
  readonly queue: string;
  readonly result: StepResult;
}

export interface FlusherOptions {
  readonly db: Queryable;
  readonly schema: string;
  readonly nodeId: string;
  readonly maxBatch: number;
  /**
   * Called after each commit with the entries it carried and, for each id that applied,
   * whether the instance is watched (someone waits for it to settle).
   */
  readonly onFlushed: (entries: readonly FlushEntry[], applied: ReadonlyMap<string, boolean>) => void;
  readonly onError: (error: unknown) => void;
}

export class Flusher implements Service {
  readonly #o: FlusherOptions;
  #buffer: FlushEntry[] = [];
  #flushing: Promise<void> | undefined;
  #stopped = false;
  #failures = 0;
  #idle: Array<() => void> = [];

  constructor(options: FlusherOptions) {
    this.#o = options;
  }

  get pending(): number {
    return this.#buffer.length;
  }

  start(): void {
    this.#stopped = false;
  }

  push(entry: FlushEntry): void {
    this.#buffer.push(entry);
    if (!this.#flushing) this.#flushing = this.#run();
  }

  async #run(): Promise<void> {
    // Let results that arrive in the same turn of the event loop join this flush.
    await new Promise((resolve) => setImmediate(resolve));
    while (this.#buffer.length > 0 && !this.#stopped) {
      const batch = this.#buffer.splice(0, this.#o.maxBatch);
      try {
        const applied = await flushOutcomes(
          this.#o.db,
          this.#o.schema,
          this.#o.nodeId,
          batch.map(toOutcomeRow),
        );
        this.#failures = 0;
        this.#o.onFlushed(batch, new Map(applied.map((r) => [r.id, r.watched])));
      } catch (error) {
        this.#o.onError(error);
        this.#buffer.unshift(...batch);
        this.#failures++;
        await new Promise((resolve) => setTimeout(resolve, Math.min(50 * 2 ** this.#failures, 5_000)));
      }
    }
    this.#flushing = undefined;
    for (const resolve of this.#idle.splice(0)) resolve();
  }

  /** Resolves when everything pushed so far has been committed (or the flusher stopped). */
  async drained(): Promise<void> {
    if (!this.#flushing && this.#buffer.length === 0) return;
    await new Promise<void>((resolve) => this.#idle.push(resolve));
  }

  /** Stops flushing; outcomes still buffered are dropped (their claims are released or reaped). */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#flushing;
    this.#buffer = [];
  }
}

export function toOutcomeRow(entry: FlushEntry): OutcomeRow {
  const { id, claim, result } = entry;
  const base = {
    id,
    claim,
    step: null,
    state: null,
    delayMs: null,
    result: null,
    lastError: null,
    error: result.error ?? null,
  };
  switch (result.kind) {
    case 'next':
      return {
        ...base,
        status: 'runnable',
        step: result.step,
        state: result.state,
        attempt: ATTEMPT.reset,
        delayMs: result.delayMs,
      };
    case 'retry':
      return {
        ...base,
        status: 'runnable',
        state: result.state,
        attempt: ATTEMPT.increment,
        delayMs: result.delayMs,
      };
    case 'done':
      return { ...base, status: 'done', attempt: ATTEMPT.keep, result: result.result };
    case 'stop':
      return {
        ...base,
        status: 'failed',
        attempt: ATTEMPT.keep,
        lastError: result.reason,
        error: result.error ?? result.reason,
      };
    case 'release':
      return { ...base, status: 'runnable', attempt: ATTEMPT.keep, error: null };
    default:
      return assertNever(result, 'step result');
  }
}
