/**
 * Notifications between processes sharing a schema, on one channel per schema.
 *
 * - `wake`: a queue has runnable work (now, or in `delayMs`). Sent after inserts and after
 *   flushes that made rows runnable.
 * - `settled`: instances reached a terminal status (for `waitFor`).
 *
 * Sending is coalesced: everything asked for while a send is being prepared or in flight
 * goes out in the next single statement, outside any hot transaction, so bursts of inserts
 * never serialise on Postgres's notification lock. Payloads never carry state.
 */
import { createHash } from 'node:crypto';
import pgListen, { type Subscriber } from 'pg-listen';
import type { ClientConfig } from 'pg';
import { trackResource } from './resources.js';
import type { Queryable } from './sql/db.js';
import { sendNotifications } from './sql/notify.js';

export interface NotificationPayload {
  /** Queues to wake, with the delay in ms after which their work is due (0 = now). */
  readonly w?: Record<string, number>;
  /** Ids of instances that settled. */
  readonly s?: string[];
}

const MAX_PAYLOAD = 7_000;

// pg-listen is CommonJS with a `default` export; ESM loaders differ in how they expose it.
const pgListenModule: unknown = pgListen;
const createSubscriber: typeof pgListen.default =
  typeof pgListenModule === 'function' ? (pgListenModule as typeof pgListen.default) : pgListen.default;

export function channelFor(schema: string): string {
  const plain = `gen_durable_${schema}`;
  return plain.length <= 63
    ? plain
    : `gen_durable_${createHash('sha1').update(schema).digest('hex').slice(0, 24)}`;
}

export class NotificationSender {
  readonly #db: Queryable;
  readonly #schema: string;
  readonly #channel: string;
  readonly #onError: (error: unknown) => void;
  /** Queues with work due now. */
  #wakeNow = new Set<string>();
  /** Queues with work due later: the earliest delay asked for (ms). */
  #wakeLater = new Map<string, number>();
  #settled: string[] = [];
  #scheduled = false;
  #inFlight: Promise<void> | undefined;
  #failures = 0;

  constructor(db: Queryable, schema: string, onError: (error: unknown) => void) {
    this.#db = db;
    this.#schema = schema;
    this.#channel = channelFor(schema);
    this.#onError = onError;
  }

  /**
   * Work in `queue` is due in `delayMs` (0 = now). Wakes due now and later are kept apart,
   * so merging a burst never turns "now and in 5 s" into only "now": the receiver arms a
   * timer for the earliest later one and, when it fires, looks up the next due time itself.
   */
  wake(queue: string, delayMs = 0): void {
    if (delayMs <= 0) this.#wakeNow.add(queue);
    else {
      const known = this.#wakeLater.get(queue);
      if (known === undefined || delayMs < known) this.#wakeLater.set(queue, delayMs);
    }
    this.#schedule();
  }

  settled(ids: readonly string[]): void {
    if (ids.length === 0) return;
    this.#settled.push(...ids);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => void this.#send());
  }

  async #send(): Promise<void> {
    await this.#inFlight;
    this.#scheduled = false;
    const now = this.#wakeNow;
    const later = this.#wakeLater;
    const settled = this.#settled;
    const payloads = this.#drain();
    if (payloads.length === 0) return;
    this.#inFlight = sendNotifications(this.#db, this.#schema, this.#channel, payloads).then(
      () => {
        this.#failures = 0;
      },
      (error: unknown) => {
        this.#onError(error);
        // Put them back for another try (a few, then the receivers' safety nets take over).
        if (++this.#failures > 5) return;
        for (const queue of now) this.wake(queue, 0);
        for (const [queue, delay] of later) this.wake(queue, delay);
        this.settled(settled);
      },
    );
    await this.#inFlight;
  }

  #drain(): string[] {
    const payloads: string[] = [];
    // Due-now and due-later wakes of one queue go in separate payloads (one key per queue).
    for (const wakes of [[...this.#wakeNow].map((q) => [q, 0] as const), [...this.#wakeLater]]) {
      let chunk: Record<string, number> = {};
      let size = 0;
      for (const [queue, delay] of wakes) {
        if (size > 0 && size + queue.length + 24 > MAX_PAYLOAD) {
          payloads.push(JSON.stringify({ w: chunk } satisfies NotificationPayload));
          chunk = {};
          size = 0;
        }
        chunk[queue] = delay;
        size += queue.length + 24;
      }
      if (size > 0) payloads.push(JSON.stringify({ w: chunk } satisfies NotificationPayload));
    }
    this.#wakeNow = new Set();
    this.#wakeLater = new Map();
    let ids: string[] = [];
    let size = 0;
    for (const id of this.#settled) {
      if (size > 0 && size + id.length + 4 > MAX_PAYLOAD) {
        payloads.push(JSON.stringify({ s: ids } satisfies NotificationPayload));
        ids = [];
        size = 0;
      }
      ids.push(id);
      size += id.length + 3;
    }
    if (ids.length > 0) payloads.push(JSON.stringify({ s: ids } satisfies NotificationPayload));
    this.#settled = [];
    return payloads;
  }

  /** Waits until everything asked for so far has been sent. */
  async flush(): Promise<void> {
    while (this.#scheduled || this.#inFlight) {
      if (this.#scheduled) await new Promise((resolve) => setImmediate(resolve));
      const inFlight = this.#inFlight;
      await inFlight;
      if (this.#inFlight === inFlight && !this.#scheduled) break;
    }
  }
}

export interface ListenerHandlers {
  onWake?(queue: string, delayMs: number): void;
  onSettled?(ids: readonly string[]): void;
  /** After a reconnect, notifications may have been missed: callers re-check at once. */
  onReconnect?(): void;
  onError?(error: unknown): void;
}

/** A dedicated LISTEN connection (pg-listen, reconnecting forever) fanning out to handlers. */
export class NotificationListener {
  readonly #subscriber: Subscriber<Record<string, NotificationPayload>>;
  readonly #channel: string;
  readonly #handlers = new Set<ListenerHandlers>();
  #started: Promise<void> | undefined;
  #closed = false;
  #untrack: (() => void) | undefined;

  constructor(connection: ClientConfig, schema: string) {
    this.#channel = channelFor(schema);
    const named = { ...connection, application_name: `gen_durable listener ${schema}`.slice(0, 63) };
    this.#subscriber = createSubscriber<Record<string, NotificationPayload>>(named, {
      retryLimit: Number.POSITIVE_INFINITY,
      retryTimeout: 0,
      retryInterval: (attempt: number) => Math.min(100 * 2 ** attempt, 5_000),
      paranoidChecking: 10_000,
    });
    this.#subscriber.notifications.on(this.#channel, (payload: NotificationPayload | undefined) => {
      if (!payload) return;
      for (const h of this.#handlers) {
        if (payload.w && h.onWake)
          for (const [queue, delay] of Object.entries(payload.w)) h.onWake(queue, delay);
        if (payload.s && h.onSettled) h.onSettled(payload.s);
      }
    });
    this.#subscriber.events.on('reconnect', () => undefined);
    this.#subscriber.events.on('connected', () => {
      if (this.#started === undefined) return;
      for (const h of this.#handlers) h.onReconnect?.();
    });
    this.#subscriber.events.on('error', (error: Error) => {
      for (const h of this.#handlers) h.onError?.(error);
    });
  }

  get channel(): string {
    return this.#channel;
  }

  add(handlers: ListenerHandlers): () => void {
    this.#handlers.add(handlers);
    return () => this.#handlers.delete(handlers);
  }

  /** Connects and listens; idempotent. */
  start(): Promise<void> {
    this.#started ??= (async () => {
      this.#untrack = trackResource(this, 'listener', this.#channel);
      await this.#subscriber.connect();
      await this.#subscriber.listenTo(this.#channel);
    })();
    return this.#started;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#started) return;
    await this.#started.catch(() => undefined);
    await this.#subscriber.close();
    this.#untrack?.();
  }
}
