/**
 * Notifications between processes sharing a schema, on one channel per schema.
 *
 * - `wake`: a queue has runnable work (now, or in `delayMs`). Sent after inserts and after
 *   flushes that made rows runnable.
 * - `settled`: instances reached a terminal status (for `waitFor`).
 * - `vacated`: the leader gave up or lost the leader lock; followers campaign at once.
 *
 * Sending is coalesced: everything asked for while a send is being prepared or in flight
 * goes out in the next single statement, outside any hot transaction, so bursts of inserts
 * never serialise on Postgres's notification lock. Payloads never carry state.
 */
import { destroySocket } from './connection.js';
import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { ClientConfig } from 'pg';
import { loadPg } from './pg.js';
import { trackResource } from './resources.js';
import type { Queryable } from './sql/db.js';
import { sendNotifications } from './sql/notify.js';

export interface NotificationPayload {
  /** Queues to wake, with the delay in ms after which their work is due (0 = now). */
  readonly w?: Record<string, number>;
  /** Ids of instances that settled. */
  readonly s?: string[];
  /** The leader lock was vacated. */
  readonly v?: 1;
}

const MAX_PAYLOAD = 7_000;

export function channelFor(schema: string): string {
  const plain = `gen_durable_${schema}`;
  return plain.length <= 63
    ? plain
    : `gen_durable_${createHash('sha1').update(schema).digest('hex').slice(0, 24)}`;
}

/**
 * The payloads that wake `now` (work due now) and `later` (queue → ms until its earliest
 * work is due), each within the size Postgres takes. Due-now and due-later wakes of one queue
 * go in separate payloads (one key per queue).
 */
export function wakePayloads(
  now: Iterable<string>,
  later: Iterable<readonly [queue: string, delayMs: number]>,
): string[] {
  const payloads: string[] = [];
  for (const wakes of [[...now].map((q) => [q, 0] as const), [...later]]) {
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
  return payloads;
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
  #vacated = false;
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

  /** This node gave up or lost the leader lock. */
  vacated(): void {
    this.#vacated = true;
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
    const vacated = this.#vacated;
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
        if (vacated) this.vacated();
      },
    );
    await this.#inFlight;
  }

  #drain(): string[] {
    const payloads = wakePayloads(this.#wakeNow, this.#wakeLater);
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
    if (this.#vacated) payloads.push(JSON.stringify({ v: 1 } satisfies NotificationPayload));
    this.#vacated = false;
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
  onVacated?(): void;
  /** After each (re)connect, notifications may have been missed: callers re-check at once. */
  onReconnect?(): void;
  onError?(error: unknown): void;
}

/** How often an idle LISTEN connection is probed (a half-open socket delivers nothing). */
const PROBE_INTERVAL_MS = 30_000;

/** Bound on opening the LISTEN connection when the caller's config sets none. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Delay before reconnect attempt `attempt` (0-based): quick at first, then every 2 s. */
function retryDelay(attempt: number): number {
  return attempt === 0 ? 0 : Math.min(50 * 2 ** attempt, 2_000);
}

/**
 * A dedicated LISTEN connection fanning out to handlers. `start()` connects once; if that
 * fails it rejects and the next `start()` tries again. Once started, a lost connection is
 * reported to `onError` and re-established in the background (forever, until `close()`),
 * then `onReconnect` runs. No connection error ever escapes as an unhandled 'error' event.
 */
export class NotificationListener {
  readonly #config: ClientConfig;
  readonly #channel: string;
  readonly #handlers = new Set<ListenerHandlers>();
  #started: Promise<void> | undefined;
  /** The live connection, once LISTEN succeeded; undefined while (re)connecting. */
  #client: pg.Client | undefined;
  /** A connection being opened (first start or reconnect), so `close()` can abort it. */
  #opening: { readonly client: pg.Client; readonly done: Promise<unknown> } | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #wakeRetry: (() => void) | undefined;
  #probe: NodeJS.Timeout | undefined;
  #reconnecting = false;
  #closed = false;
  #untrack: (() => void) | undefined;

  constructor(connection: ClientConfig, schema: string) {
    this.#channel = channelFor(schema);
    this.#config = {
      ...connection,
      keepAlive: true,
      // A server that accepts but never answers must not hold a reconnect attempt forever.
      connectionTimeoutMillis: connection.connectionTimeoutMillis || CONNECT_TIMEOUT_MS,
      // The user's name (in the config, or in the connection string, which pg lets win)
      // stays: operators tell processes apart by it. Ours only when none was given.
      application_name: connection.application_name ?? `gen_durable listener ${schema}`.slice(0, 63),
    };
  }

  get channel(): string {
    return this.#channel;
  }

  add(handlers: ListenerHandlers): () => void {
    this.#handlers.add(handlers);
    return () => this.#handlers.delete(handlers);
  }

  /** Connects and listens; idempotent. A failed first connect is forgotten: call again to retry. */
  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('the notification listener is closed'));
    this.#started ??= this.#connect().then(
      (client) => {
        this.#untrack ??= trackResource(this, 'listener', this.#channel);
        this.#use(client);
      },
      (error: unknown) => {
        this.#started = undefined;
        throw error;
      },
    );
    return this.#started;
  }

  /** Opens a connection and LISTENs on it; on any failure the connection is ended. */
  #connect(): Promise<pg.Client> {
    const client = new (loadPg().Client)(this.#config);
    // Attached before connecting and never removed: a late error on a dead connection is
    // routed here instead of crashing the process.
    client.on('error', (error: Error) => this.#lost(client, error));
    client.on('end', () => this.#lost(client, undefined));
    client.on('notification', (message) => this.#dispatch(message.channel, message.payload));
    const done = (async () => {
      try {
        await client.connect();
        await client.query(`LISTEN "${this.#channel.replaceAll('"', '""')}"`);
        if (this.#closed) throw new Error('the notification listener is closed');
        return client;
      } catch (error) {
        void client.end().catch(() => undefined);
        throw error;
      } finally {
        if (this.#opening?.client === client) this.#opening = undefined;
      }
    })();
    this.#opening = { client, done };
    return done;
  }

  #use(client: pg.Client): void {
    if (this.#closed) {
      void client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    this.#probe = setInterval(() => {
      if (this.#client !== client) return;
      client.query('SELECT 1').catch((error: unknown) => this.#lost(client, error));
    }, PROBE_INTERVAL_MS);
    this.#probe.unref();
    for (const h of this.#handlers) h.onReconnect?.();
  }

  #dispatch(channel: string, raw: string | undefined): void {
    if (channel !== this.#channel || !raw) return;
    let payload: NotificationPayload;
    try {
      payload = JSON.parse(raw) as NotificationPayload;
    } catch (error) {
      for (const h of this.#handlers) h.onError?.(error);
      return;
    }
    for (const h of this.#handlers) {
      if (payload.w && h.onWake)
        for (const [queue, delay] of Object.entries(payload.w)) h.onWake(queue, delay);
      if (payload.s && h.onSettled) h.onSettled(payload.s);
      if (payload.v) h.onVacated?.();
    }
  }

  /** The live connection failed or ended: report it once and reconnect in the background. */
  #lost(client: pg.Client, error: unknown): void {
    if (client !== this.#client || this.#closed) return;
    this.#client = undefined;
    clearInterval(this.#probe);
    void client.end().catch(() => undefined);
    const reported = error ?? new Error('the notification connection ended unexpectedly');
    for (const h of this.#handlers) h.onError?.(reported);
    void this.#reconnect();
  }

  async #reconnect(): Promise<void> {
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    try {
      for (let attempt = 0; !this.#closed; attempt++) {
        await new Promise<void>((resolve) => {
          this.#wakeRetry = resolve;
          this.#retryTimer = setTimeout(resolve, retryDelay(attempt));
        });
        if (this.#closed) return;
        try {
          this.#use(await this.#connect());
          return;
        } catch (error) {
          if (this.#closed) return;
          for (const h of this.#handlers) h.onError?.(error);
        }
      }
    } finally {
      this.#reconnecting = false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearInterval(this.#probe);
    this.#wakeRetry?.();
    const opening = this.#opening;
    // A connect that hangs (an unresponsive server) must not hold close(): abort it.
    if (opening) {
      // end() would wait for the server to answer its goodbye (and keep connect() pending):
      // destroy the socket instead.
      destroySocket(opening.client);
      await opening.done.catch(() => undefined);
    }
    await this.#started?.catch(() => undefined);
    const client = this.#client;
    this.#client = undefined;
    await client?.end().catch(() => undefined);
    this.#untrack?.();
  }
}
