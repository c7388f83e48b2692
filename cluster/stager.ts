/**
 * The stager: wakes the queues whose delayed work falls due — rows inserted with `runAt` or
 * `delay`, retries waiting out their backoff, reaped claims — with one notification per
 * queue at the moment its earliest row falls due, so that the nodes do not each keep timers
 * and look up due times of their own.
 *
 * It learns due times from the notifications every insert, flush and reap sends
 * (`heard(queue, delayMs)`, "due later"), and by looking them up (`nextDueIn`, one index
 * probe per priority): for every queue the registered nodes run when it starts (the node
 * was just elected) and every `sweepIntervalMs` after, and for a queue each time its timer
 * fires (a later due time may have been merged away behind the one that fired). It keeps one
 * timer per queue, for the earliest due time it knows of.
 *
 * It also fires await deadlines (`awaitSignals(..., { timeout })`): rows parked past their
 * deadline become runnable (`ctx.timedOut`), their queues woken. It arms one more timer, for
 * the earliest deadline (looked up on every sweep, one index probe), and fires deadlines
 * before each queue wake-up it sends: a park with a timeout announces itself as work due in
 * that queue at the deadline.
 *
 * A leader service: only the leader runs it (`LeaderServices`). Two leaders at once send a
 * wake-up twice, which costs one empty claim; a deadline is fired by one of them (the rows
 * are locked, skipped by the other).
 */
import { MAX_TIMER_MS } from '../runtime/duration.js';
import type { Queryable } from '../runtime/sql/db.js';
import { nextDueIn } from '../runtime/sql/claim.js';
import { listNodeQueues } from '../runtime/sql/nodes.js';
import { fireAwaitTimeouts, nextAwaitDeadline } from '../runtime/sql/signals.js';
import { PeriodicService } from '../runtime/service.js';
import { publish, telemetry } from '../runtime/telemetry.js';

/** The key of the deadline timer among the queues' (no queue is named ''). */
const DEADLINES = '';
/** Deadlines fired per statement. */
const TIMEOUT_BATCH = 1_000;

interface Due {
  readonly at: number;
  readonly timer: NodeJS.Timeout;
}

export class Stager extends PeriodicService {
  readonly #due = new Map<string, Due>();
  /** Queues heard of in notifications, swept along with the nodes' queues. */
  readonly #heardOf = new Set<string>();

  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      sweepIntervalMs: number;
      /** Wakes every node running `queue` (a notification), this one's feeder included. */
      wake: (queue: string) => void;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.sweepIntervalMs);
  }

  override async stop(): Promise<void> {
    // Not started from here on: a look-up still in flight arms nothing.
    const stopped = super.stop();
    for (const due of this.#due.values()) clearTimeout(due.timer);
    this.#due.clear();
    await stopped;
  }

  /** Work in `queue` falls due in `delayMs` (a "due later" notification). */
  heard(queue: string, delayMs: number): void {
    if (!this.started) return;
    this.#heardOf.add(queue);
    this.#arm(queue, delayMs);
  }

  /** Looks up the next due time of every queue the nodes run (and any heard of); returns them (ms from now). */
  async runOnce(): Promise<Map<string, number>> {
    await this.#fireTimeouts();
    const deadline = await nextAwaitDeadline(this.o.db, this.o.schema);
    if (deadline !== null && this.started) this.#arm(DEADLINES, deadline);
    const queues = new Set([...(await listNodeQueues(this.o.db, this.o.schema)), ...this.#heardOf]);
    const found = new Map<string, number>();
    for (const queue of queues) {
      const ms = await nextDueIn(this.o.db, this.o.schema, queue);
      if (ms === null) continue;
      found.set(queue, ms);
      if (this.started) this.#arm(queue, ms);
    }
    return found;
  }

  /** Keeps the earlier of the known due time and `delayMs` from now. */
  #arm(queue: string, delayMs: number): void {
    const ms = Math.min(Math.max(0, delayMs), MAX_TIMER_MS - 5);
    const at = Date.now() + ms;
    const known = this.#due.get(queue);
    if (known && known.at <= at) return;
    if (known) clearTimeout(known.timer);
    // Beyond a timer's reach: fire at its reach, which only looks up again.
    const reachable = delayMs <= ms;
    const timer = setTimeout(() => void this.#fire(queue, reachable), ms + 5);
    timer.unref();
    this.#due.set(queue, { at, timer });
  }

  async #fire(queue: string, due: boolean): Promise<void> {
    this.#due.delete(queue);
    if (!this.started) return;
    let woke = !due || queue === DEADLINES;
    try {
      await this.#fireTimeouts();
      if (!woke) {
        this.o.wake(queue);
        woke = true;
      }
      const ms =
        queue === DEADLINES
          ? await nextAwaitDeadline(this.o.db, this.o.schema)
          : await nextDueIn(this.o.db, this.o.schema, queue);
      if (ms !== null && this.started) this.#arm(queue, ms);
    } catch (error) {
      // The queue's own due work is woken regardless; the next sweep looks again.
      if (!woke) this.o.wake(queue);
      this.o.onError(error);
    }
  }

  /** Fires every passed await deadline and wakes the queues of the rows it woke. */
  async #fireTimeouts(): Promise<void> {
    for (;;) {
      const fired = await fireAwaitTimeouts(this.o.db, this.o.schema, TIMEOUT_BATCH);
      for (const queue of new Set(fired.map((r) => r.queue))) this.o.wake(queue);
      for (const r of fired)
        publish(telemetry.awaitTimeout, () => ({ id: r.id, queue: r.queue, step: r.step }));
      if (fired.length < TIMEOUT_BATCH || !this.started) return;
    }
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
