/**
 * The feeder of one queue on one node: claims work for its slots (backpressure) and hands
 * it to the executor, as a pipeline whose stages overlap:
 *
 *   claim ──▶ buffer ──▶ running (≤ concurrency) ──▶ committing (≤ maxUncommitted) ──▶ done
 *
 * - A slot is a step of user code running: it frees when the step's result reaches the main
 *   thread, not when that result is committed, so commits never hold steps back; results
 *   waiting for their commit are bounded on their own (`maxUncommitted`): past it, claims
 *   pause until commits catch up.
 * - Claim ahead: rows claimed beyond the free slots wait in a local buffer, under lease,
 *   and start the moment a slot frees, so a step does not wait for a pick's round trip.
 *   The buffer holds at most eight times what this queue finished during the last pick's
 *   round trip, or twice what it held before when every step finished and nothing was left to
 *   start while that pick was out, and at least `concurrency` when every step had finished
 *   before the pick went out and ran for at most half a usual round trip (capped by
 *   `claimAhead`): short steps keep a batch ready
 *   and the batches grow until they cover a round trip (one pick is out at a time, so each
 *   must carry what runs until the next returns); long steps claim (almost) nothing ahead,
 *   so rows other nodes could run are not held here. A buffered row that waits longer than `bufferWaitMs` is
 *   given back uncharged, as is the whole buffer on stop.
 *
 * Modes:
 * - idle: nothing known to be waiting; no queries. Leaves idle on a wake-up (a notification,
 *   a local due timer, a listener reconnect, the slow safety poll).
 * - backlogged: the last claim filled its batch, so more work is probably waiting; freed
 *   slots (and commits, if claims paused for them) claim again at once, as soon as there
 *   is room for half the rows that may wait ahead (`#worthPicking`).
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

/**
 * How many rows may wait ahead, per step that finished during the last pick. Exactly 1 is a
 * fixed point at any rate: batches sized by what finished during a round trip can never
 * grow, since the next round trip starts only when this one ends. More lets them grow while
 * short steps keep finishing, up to `claimAhead`. A pick goes out once there is room for
 * half of what may wait, so with 8 each pick carries about four times what finished during
 * the last: a node picks at a rate set by the round trip whatever its share of the work, and
 * with several nodes on a queue their picks (each a commit) would otherwise carry a share
 * as small (2 → 4: 0.058 → 0.043 commits per job, three processes at concurrency 16; 4 → 8:
 * ~50 → ~100 rows per pick there, the drain at 3 × 16 ~+10%, six alternating runs).
 */
const AHEAD_PER_FINISHED = 8;

/**
 * Steps count as quick (a round of them is claimed ahead) when the slots sat idle during a
 * pick at least this many times as long as the steps had run.
 */
const QUICK_IDLE_RATIO = 2;

export interface FeederOptions {
  readonly queue: string;
  /** Steps of user code running at once, at most. */
  readonly concurrency: number;
  readonly batchSize: number;
  readonly pollIntervalMs: number;
  /** Rows claimed beyond the free slots, at most (0: none). */
  readonly claimAhead: number;
  /** Results waiting for their commit, at most, before claims pause. */
  readonly maxUncommitted: number;
  /** How long a claimed row may wait in the buffer for a slot before it is given back. */
  readonly bufferWaitMs: number;
  /**
   * Claims up to `limit` rows. `full`: the claim met as many rows as it asked for (some may
   * have been put off by a rate limit), so more may be due.
   */
  readonly claim: (limit: number) => Promise<{ rows: ClaimedRow[]; full: boolean }>;
  /** Runs the rows (each reports back with `stepsFinished`). */
  readonly dispatch: (rows: ClaimedRow[]) => void;
  /** Claimed rows that will not run here: release them uncharged (each counts as a result to commit). */
  readonly giveBack: (rows: ClaimedRow[]) => void;
  readonly onError: (error: unknown) => void;
  /** A monotonic clock in ms (default `performance.now`). */
  readonly now?: () => number;
}

interface Buffered {
  readonly row: ClaimedRow;
  readonly at: number;
}

export class Feeder implements Service {
  readonly queue: string;
  readonly #o: FeederOptions;
  #buffer: Buffered[] = [];
  #running = 0;
  #committing = 0;
  /**
   * Rows the buffer may hold: `AHEAD_PER_FINISHED` times what finished during the last pick
   * (≤ `claimAhead`).
   */
  #ahead = 0;
  #finished = 0;
  /** Every step finished and nothing was buffered while the current pick was out. */
  #drained = false;
  /** When the running steps last went from none to some. */
  #busySince = 0;
  /** How long the last stretch of running steps lasted, from the first start to the last result. */
  #busyMs: number | undefined;
  /** When that stretch ended (its last result came in). */
  #busyEnded = 0;
  /**
   * A pick's round trip as it usually is: the fastest of late, rising by a quarter per pick
   * while picks are slower (so one slow pick under a passing load does not move it).
   */
  #pickFloorMs: number | undefined;
  readonly #now: () => number;
  #wanted = false;
  #backlog = false;
  #picking: Promise<void> | undefined;
  #dispatchQueued = false;
  #started = false;
  #poll: NodeJS.Timeout | undefined;
  #dueTimer: NodeJS.Timeout | undefined;
  #dueAt = Number.POSITIVE_INFINITY;
  #retryTimer: NodeJS.Timeout | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;

  constructor(options: FeederOptions) {
    this.#o = options;
    this.queue = options.queue;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Rows claimed here and not yet committed: buffered, running, or waiting for their commit. */
  get inFlight(): number {
    return this.#buffer.length + this.#running + this.#committing;
  }

  /** Steps of user code running now. */
  get running(): number {
    return this.#running;
  }

  /** Claimed rows waiting for a slot. */
  get buffered(): number {
    return this.#buffer.length;
  }

  /** Started and not stopping: rows handed to `resume` will run here. */
  get accepting(): boolean {
    return this.#started;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
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
    if (!this.#started) return;
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

  /**
   * `n` dispatched steps reported their results (to be committed): their slots are free.
   * Buffered rows start once the results that arrived in this turn of the event loop are all
   * counted (from every thread's messages and replies): starting rows as each message
   * arrives sent batches of ~3 steps (measured at c=64: 19,112 dispatches for 60,000 steps,
   * 1,436 once coalesced per turn), and each batch costs its thread hop.
   */
  stepsFinished(n: number): void {
    this.#running -= n;
    if (this.#running === 0) {
      this.#busyEnded = this.#now();
      this.#busyMs = this.#busyEnded - this.#busySince;
    }
    this.#committing += n;
    this.#finished += n;
    if (this.#backlog) this.#wanted = true;
    if (!this.#dispatchQueued) {
      this.#dispatchQueued = true;
      setImmediate(() => {
        this.#dispatchQueued = false;
        this.#startBuffered();
        if (this.#running === 0 && this.#buffer.length === 0 && this.#picking) this.#drained = true;
        this.#pump();
      });
    }
  }

  /** `n` results were committed (or given up): they no longer count against `maxUncommitted`. */
  committed(n: number): void {
    this.#committing -= n;
    if (this.#backlog) this.#wanted = true;
    this.#pump();
  }

  /**
   * Rows claimed here whose next step runs ahead (committed `executing`, see `run-ahead.ts`):
   * they start before the buffered rows, as slots free. Stopping, they are given back.
   */
  resume(rows: ClaimedRow[]): void {
    if (rows.length === 0) return;
    if (!this.#started) return this.giveBack(rows);
    const at = Date.now();
    this.#buffer.unshift(...rows.map((row) => ({ row, at })));
    this.#startBuffered();
  }

  /** How many rows the next claim may ask for. */
  #room(): number {
    if (this.#committing >= this.#o.maxUncommitted) return 0;
    const slots = this.#o.concurrency + this.#ahead - this.#running - this.#buffer.length;
    return Math.min(slots, this.#o.batchSize);
  }

  /**
   * The fewest rows worth a pick: half of those that may wait ahead (at least 1). Picking
   * the moment any slot frees would send a train of small picks, each a statement and a
   * commit of its own; while the buffer and the running steps still cover about half a round
   * trip, waiting for room for a larger batch keeps the slots as busy with fewer picks.
   * With long steps nothing waits ahead, and a pick goes out for each slot that frees.
   */
  #worthPicking(): number {
    return Math.max(1, Math.min(this.#o.batchSize, Math.floor(this.#ahead / 2)));
  }

  #pump(): void {
    if (!this.#started || this.#picking || !this.#wanted) return;
    if (this.#room() < this.#worthPicking()) return;
    this.#picking = this.#loop().finally(() => {
      this.#picking = undefined;
      this.#pump();
    });
  }

  async #loop(): Promise<void> {
    while (this.#started && this.#wanted && this.#room() >= this.#worthPicking()) {
      this.#wanted = false;
      const limit = this.#room();
      this.#finished = 0;
      this.#drained = false;
      // Nothing runs or waits: the slots stay idle for this whole round trip. It counts only
      // when steps were running until just now (this pick went out as they ended), not after
      // a pause in which nothing was due.
      const pickedAt = this.#now();
      const busyMs = this.#busyMs;
      this.#busyMs = undefined;
      const starved =
        this.#running === 0 &&
        this.#buffer.length === 0 &&
        busyMs !== undefined &&
        pickedAt - this.#busyEnded <= (this.#pickFloorMs ?? 0);
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
      // What finished while this pick was out is about what the next one should find ready.
      // Steps that all finish at once (one batch on one thread) finish between picks, never
      // during one: when the slots sit idle for a pick's usual round trip at least twice as
      // long as those steps ran, a round of them (`concurrency`) should be ready the next
      // time. Once rows wait ahead, picks overlap running steps and the rule above keeps
      // them coming.
      const took = this.#now() - pickedAt;
      this.#pickFloorMs = Math.min(took, this.#pickFloorMs === undefined ? took : 1.25 * this.#pickFloorMs);
      const quick = starved && QUICK_IDLE_RATIO * busyMs <= this.#pickFloorMs;
      this.#ahead = Math.min(
        this.#o.claimAhead,
        Math.max(
          AHEAD_PER_FINISHED * this.#finished,
          this.#drained ? 2 * this.#ahead : 0,
          quick ? this.#o.concurrency : 0,
        ),
      );
      this.#backlog = full;
      if (this.#backlog) this.#wanted = true;
      if (rows.length === 0) continue;
      if (!this.#started) return this.giveBack(rows);
      const at = Date.now();
      for (const row of rows) this.#buffer.push({ row, at });
      this.#startBuffered();
    }
  }

  /** Starts buffered rows in the free slots; arms the expiry of those left waiting. */
  #startBuffered(): void {
    const n = Math.min(this.#o.concurrency - this.#running, this.#buffer.length);
    if (n > 0) {
      if (this.#running === 0) this.#busySince = this.#now();
      const rows = this.#buffer.splice(0, n).map((b) => b.row);
      this.#running += n;
      this.#o.dispatch(rows);
    }
    if (this.#buffer.length > 0 && !this.#expiryTimer) {
      // Continuations go in front of older rows: the oldest is not always first.
      const oldest = this.#buffer.reduce((at, b) => Math.min(at, b.at), Number.POSITIVE_INFINITY);
      const wait = oldest + this.#o.bufferWaitMs - Date.now();
      this.#expiryTimer = setTimeout(() => this.#expire(), Math.max(1, wait));
      this.#expiryTimer.unref();
    }
  }

  /** Gives back the buffered rows that waited too long for a slot. */
  #expire(): void {
    this.#expiryTimer = undefined;
    const cutoff = Date.now() - this.#o.bufferWaitMs;
    const late = this.#buffer.filter((b) => b.at <= cutoff);
    if (late.length > 0) {
      this.#buffer = this.#buffer.filter((b) => b.at > cutoff);
      this.giveBack(late.map((b) => b.row));
    }
    // The slots stay busy with long steps: hold nothing ahead until a pick sees them finish.
    this.#ahead = 0;
    this.#startBuffered();
  }

  /** Claimed rows that will not run here: given back uncharged (they count until committed). */
  giveBack(rows: ClaimedRow[]): void {
    if (rows.length === 0) return;
    this.#committing += rows.length;
    this.#o.giveBack(rows);
  }

  /** Stops claiming and gives back the buffered rows; steps already dispatched carry on. */
  async stop(): Promise<void> {
    this.#started = false;
    clearInterval(this.#poll);
    clearTimeout(this.#dueTimer);
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = undefined;
    this.#dueAt = Number.POSITIVE_INFINITY;
    this.giveBack(this.#buffer.splice(0).map((b) => b.row));
    await this.#picking;
  }
}
