/**
 * Group commit: step results from every thread of every queue gather in one buffer; a flush
 * commits up to `maxBatch` of them in one statement (see `flushOutcomes`). While a flush is
 * in flight the next batch gathers, and the next flush starts when the previous one ends:
 * at once when no claimed row is left to report here (no added delay at low load), else
 * once the results of the rows claimed then have arrived or one flush's duration has
 * passed, whichever comes first (`#hold`). Without the hold a flush carries what arrived
 * during one round trip, so with several nodes on a queue each node's share is committed in
 * batches as small (three processes at concurrency 16: ~22 outcomes per flush, ~45 with
 * the hold), and Postgres pays every statement's fixed cost over fewer rows.
 *
 * Failures (classified by `isTransient`):
 * - transient (connection lost, Postgres restarting, a deadlock): the same outcomes again,
 *   with backoff. That is safe: each outcome is guarded by its claim, so one that was in fact
 *   committed before the failure does not apply twice. After `retryLimitMs` of failing the
 *   batch is given up (`onAbandoned`): its rows stay claimed until the reaper takes them.
 * - anything else would recur with the same values: the batch is bisected so the good
 *   outcomes commit, and an outcome that fails alone is committed as `stop` (status
 *   `failed`) with the database's error instead; if even that is refused, as a bare `stop`
 *   with a fixed reason. An outcome is only ever given up, never dropped silently.
 */
import type { StepResult } from './executor.js';
import type { ClaimedRow } from './sql/claim.js';
import { type Committed as CommitResult, commitBatch } from './commit.js';
import { compareIds } from './instance.js';
import type { Queryable } from './sql/db.js';
import type { Service } from './service.js';
import { isTransient } from './sql/errors.js';
import { MAX_ERROR_MESSAGE, boundText, errorDetail, errorMessage } from './errors.js';

export type { CommitResult };

/** The longest a flush is held by default, ms (see `#hold`). */
const MAX_HOLD_MS = 10;

/** Sub-batches that committed, each with what it did. */
type Committed = Array<[readonly FlushEntry[], CommitResult]>;

/** Prefix of the reason an outcome gets when Postgres refuses to store it. */
const UNSTORABLE = 'the outcome could not be stored';
/** The last resort for an outcome Postgres refuses even as a `stop` with its error. */
const BARE_STOP = `${UNSTORABLE} (nor the error that refused it)`;

export interface FlushEntry {
  readonly id: string;
  readonly claim: string;
  readonly queue: string;
  /** The row's parent (it is a spawned child), counted down when the row ends. */
  readonly parentId?: string | null;
  /** The claim found signals in the row's inbox (a terminal outcome clears them). */
  readonly hadInbox?: boolean;
  /** The row's concurrency key when claimed: its end frees a slot of the key. */
  readonly concurrencyKey?: string | null;
  readonly result: StepResult;
  /**
   * A `next` run ahead (`continuationOf`): the row its next step runs on, started here once
   * this outcome is committed (the row stays `executing`, on this claim token + 1).
   */
  readonly continuation?: ClaimedRow;
}

export interface FlusherOptions {
  readonly db: Queryable;
  readonly schema: string;
  readonly nodeId: string;
  readonly maxBatch: number;
  /** How long a batch may keep failing transiently before it is given up. */
  readonly retryLimitMs: number;
  /** Rows that end `done` are deleted where nothing reads them after (GC's `retention: 0`). */
  readonly deleteDone?: boolean;
  /**
   * Claimed rows on this node whose results will come here (running, or waiting for a
   * slot): a flush is held for them (`#hold`). Default: none known, never held.
   */
  readonly unreported?: () => number;
  /** The longest a flush is held, ms (default 10); never longer than the last flush took. */
  readonly maxHoldMs?: number;
  /**
   * Called after each commit with the entries it carried and what it did: for each id that
   * applied, whether the instance is watched (someone waits for it to settle); the queues it
   * made work runnable in.
   */
  readonly onFlushed: (entries: readonly FlushEntry[], committed: CommitResult) => void;
  /** Entries that could not be committed at all: their rows stay claimed until reaped. */
  readonly onAbandoned: (entries: readonly FlushEntry[], error: unknown) => void;
  readonly onError: (error: unknown) => void;
}

export class Flusher implements Service {
  readonly #o: FlusherOptions;
  #buffer: FlushEntry[] = [];
  #flushing: Promise<void> | undefined;
  #stopped = false;
  #failures = 0;
  #failingSince = 0;
  #idle: Array<() => void> = [];
  /** How long the last flush took, ms: the longest a flush is held (`#hold`). */
  #lastFlushMs = 0;
  /** A held flush: goes out once the buffer holds `target` outcomes. */
  #held: { target: number; release: () => void } | undefined;
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
    if (this.#held && this.#buffer.length >= this.#held.target) this.#held.release();
    if (!this.#flushing) this.#flushing = this.#run();
  }

  /**
   * Waits, before a flush, for the results of the rows claimed here now (`unreported`: at most
   * `maxBatch` outcomes in all) or for as long as the last flush took (at most `maxHoldMs`),
   * whichever comes first; not at all when no claimed row is left to report. An outcome's
   * commit is delayed by at most one flush's duration, and only while more outcomes are on
   * their way to share it.
   */
  async #hold(): Promise<void> {
    const target = Math.min(this.#o.maxBatch, this.#buffer.length + (this.#o.unreported?.() ?? 0));
    if (this.#buffer.length >= target || this.#lastFlushMs <= 0) return;
    await new Promise<void>((resolve) => {
      const release = (): void => {
        clearTimeout(timer);
        this.#held = undefined;
        resolve();
      };
      const timer = setTimeout(release, Math.min(this.#lastFlushMs, this.#o.maxHoldMs ?? MAX_HOLD_MS));
      this.#held = { target, release };
    });
  }

  async #run(): Promise<void> {
    // Let results that arrive in the same turn of the event loop join this flush.
    await new Promise((resolve) => setImmediate(resolve));
    while (this.#buffer.length > 0 && !this.#stopped) {
      await this.#hold();
      if (this.#stopped) break;
      // In id order: rows are locked in one order by every flush.
      const batch = this.#buffer.splice(0, this.#o.maxBatch).sort((a, b) => compareIds(a.id, b.id));
      let committed: Committed;
      const abandoned: FlushEntry[] = [];
      let abandonedBy: unknown;
      const started = performance.now();
      try {
        committed = await this.#isolate(batch, (entry, error) => {
          abandoned.push(entry);
          abandonedBy = error;
        });
        this.#lastFlushMs = performance.now() - started;
      } catch (error) {
        // Transient (see `#isolate`): the same outcomes again later, while within the limit.
        this.#o.onError(error);
        if (this.#failures++ === 0) this.#failingSince = Date.now();
        if (Date.now() - this.#failingSince >= this.#o.retryLimitMs) {
          this.#failures = 0;
          this.#o.onAbandoned(batch, error);
          continue;
        }
        this.#buffer.unshift(...batch);
        await this.#sleep(Math.min(50 * 2 ** this.#failures, 5_000));
        continue;
      }
      this.#failures = 0;
      for (const [entries, result] of committed) this.#o.onFlushed(entries, result);
      if (abandoned.length > 0) this.#o.onAbandoned(abandoned, abandonedBy);
    }
    this.#flushing = undefined;
    for (const resolve of this.#idle.splice(0)) resolve();
  }

  #commit(batch: readonly FlushEntry[]): Promise<CommitResult> {
    return commitBatch(this.#o.db, this.#o.schema, this.#o.nodeId, batch, {
      deleteDone: this.#o.deleteDone === true,
    });
  }

  /**
   * Commits a batch; a non-transient failure would recur with the same values and block
   * every outcome behind it, so the batch is bisected: the good outcomes commit, a bad one
   * is committed as `stop` with the database's error, then as a bare `stop`, and only when
   * even that is refused is it given up (`abandon`). A transient failure is thrown: the
   * caller retries the whole batch (outcomes that committed meanwhile do not apply twice).
   */
  async #isolate(
    batch: readonly FlushEntry[],
    abandon: (entry: FlushEntry, error: unknown) => void,
  ): Promise<Committed> {
    try {
      return [[batch, await this.#commit(batch)]];
    } catch (error) {
      if (isTransient(error)) throw error;
      if (batch.length > 1) {
        const half = Math.ceil(batch.length / 2);
        return [
          ...(await this.#isolate(batch.slice(0, half), abandon)),
          ...(await this.#isolate(batch.slice(half), abandon)),
        ];
      }
      const entry = batch[0]!;
      this.#o.onError(error);
      const reason =
        entry.result.kind === 'stop' && entry.result.reason.startsWith(UNSTORABLE)
          ? entry.result.reason === BARE_STOP
            ? undefined
            : BARE_STOP
          : boundText(`${UNSTORABLE}: ${errorMessage(error)}`, MAX_ERROR_MESSAGE);
      if (reason === undefined) {
        abandon(entry, error);
        return [];
      }
      // A stop runs nothing ahead.
      const { continuation: _, ...plain } = entry;
      const stopped: FlushEntry = {
        ...plain,
        result:
          reason === BARE_STOP
            ? { id: entry.id, kind: 'stop', reason }
            : { id: entry.id, kind: 'stop', reason, error: reason, errorDetail: errorDetail(error) },
      };
      return this.#isolate([stopped], abandon);
    }
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
    this.#held?.release();
    await this.#flushing;
    this.#buffer = [];
  }
}
