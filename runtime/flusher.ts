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
import { isDataError } from './sql/errors.js';
import { errorMessage } from './errors.js';
import { storableText } from './json.js';

/** Sub-batches that committed, each with what applied (id → watched). */
type Committed = Array<[readonly FlushEntry[], ReadonlyMap<string, boolean>]>;

/** Prefix of the reason an outcome gets when Postgres refuses to store it. */
const UNSTORABLE = 'the outcome could not be stored';

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
  #wakeSleeper: () => void = () => undefined;

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
      let committed: Committed;
      try {
        committed = [[batch, await this.#commit(batch)]];
      } catch (error) {
        this.#o.onError(error);
        try {
          if (!isDataError(error)) throw error;
          committed = await this.#split(batch);
        } catch (failure) {
          // Transient (connection lost, Postgres restarting): the same outcomes again later.
          // Any that did commit before the failure no longer match their claim: no double apply.
          if (failure !== error) this.#o.onError(failure);
          this.#buffer.unshift(...batch);
          this.#failures++;
          await this.#sleep(Math.min(50 * 2 ** this.#failures, 5_000));
          continue;
        }
      }
      this.#failures = 0;
      for (const [entries, applied] of committed) this.#o.onFlushed(entries, applied);
    }
    this.#flushing = undefined;
    for (const resolve of this.#idle.splice(0)) resolve();
  }

  async #commit(batch: readonly FlushEntry[]): Promise<ReadonlyMap<string, boolean>> {
    const applied = await flushOutcomes(this.#o.db, this.#o.schema, this.#o.nodeId, batch.map(toOutcomeRow));
    return new Map(applied.map((r) => [r.id, r.watched]));
  }

  /**
   * A batch that Postgres rejected for its values (see `isDataError`) would fail the same
   * way forever and block every outcome behind it. Bisect it: the good outcomes commit, a
   * bad one is committed as `stop` with the database's error instead. If even that fails
   * (no known input does) it is dropped and reported; the row stays claimed by this node
   * until the node stops (the drain releases it) or dies (the reaper takes it).
   */
  async #isolate(batch: readonly FlushEntry[]): Promise<Committed> {
    try {
      return [[batch, await this.#commit(batch)]];
    } catch (error) {
      if (!isDataError(error)) throw error;
      if (batch.length > 1) return this.#split(batch);
      const entry = batch[0]!;
      if (entry.result.kind === 'stop' && entry.result.reason.startsWith(UNSTORABLE)) {
        this.#o.onError(error);
        return [[batch, new Map()]];
      }
      const reason = `${UNSTORABLE}: ${errorMessage(error)}`;
      const stopped: FlushEntry = { ...entry, result: { id: entry.id, kind: 'stop', reason, error: reason } };
      return this.#isolate([stopped]);
    }
  }

  /** Commits the two halves of a batch that failed for its values, each isolated further. */
  async #split(batch: readonly FlushEntry[]): Promise<Committed> {
    if (batch.length === 1) return this.#isolate(batch);
    const half = Math.ceil(batch.length / 2);
    return [...(await this.#isolate(batch.slice(0, half))), ...(await this.#isolate(batch.slice(half)))];
  }

  #sleep(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wakeSleeper = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Resolves when everything pushed so far has been committed (or the flusher stopped). */
  async drained(): Promise<void> {
    if (!this.#flushing && this.#buffer.length === 0) return;
    await new Promise<void>((resolve) => this.#idle.push(resolve));
  }

  /** Stops flushing; outcomes still buffered are dropped (their claims are released or reaped). */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wakeSleeper();
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
    error: result.error === undefined ? null : storableText(result.error),
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
        lastError: storableText(result.reason),
        error: storableText(result.error ?? result.reason),
      };
    case 'release':
      return { ...base, status: 'runnable', attempt: ATTEMPT.keep, error: null };
    default:
      return assertNever(result, 'step result');
  }
}
