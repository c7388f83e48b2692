/**
 * The client: inserting, addressing, waiting for and cancelling instances. Needs no worker
 * role; a joined node exposes one as `node.client`.
 */
import type pg from 'pg';
import { loadPg } from './pg.js';
import { z } from 'zod';
import { connectionStringSchema } from './connection.js';
import { durationSchema } from './duration.js';
import { GenDurableError, ValidationError, errorMessage, parseInput } from './errors.js';
import { type InsertOptions, toInsertRow } from './insert-options.js';
import type { AnyMachine, ResultOf } from './machine.js';
import { NotificationListener, NotificationSender } from './notifications.js';
import { trackResource } from './resources.js';
import { publish, telemetry } from './telemetry.js';
import {
  type Snapshot,
  type Target,
  type TypedId,
  type WaitResult,
  describeTarget,
  isInstanceId,
  toSnapshot,
} from './instance.js';
import { TIMED_OUT, beforeDeadline, unavailable, waitForSettlement } from './wait-for.js';
import { type Queryable, validateSchemaName } from './sql/db.js';
import {
  type InsertRow,
  type InstanceRow,
  cancelInstance,
  countInstances,
  findOccupiedKeys,
  getInstanceById,
  getInstanceByKey,
  insertInstances,
  listInstances,
} from './sql/instances.js';
import { channelFor, wakePayloads } from './notifications.js';
import { parseTarget, toSignalRequest } from './signal-input.js';
import { deliverSignals, findSignalByDedup } from './sql/signals.js';
import { sendNotifications } from './sql/notify.js';
import { ALL_STATUSES, type Status, isTerminal } from './status.js';

export type { Snapshot, Target, TypedId, WaitResult } from './instance.js';

/** What `insert` answers; with `M`, its `id` is typed by that definition. */
export interface InsertResult<M extends AnyMachine | undefined = undefined> {
  readonly id: M extends AnyMachine ? TypedId<M> : string;
  /** False when the correlation key was occupied: `id` is the existing instance. */
  readonly inserted: boolean;
}

/** What `signal` answers. */
export type SignalResult =
  | { readonly delivered: true; readonly id: string; readonly duplicate?: true }
  | { readonly delivered: false; readonly reason: 'no_target' };

/** One `insertAll` item: `insert`'s options and the definition. */
export type InsertItem<M extends AnyMachine = AnyMachine> = InsertOptions<M> & { readonly machine: M };

type MachineOf<Item> = Item extends { readonly machine: infer M extends AnyMachine } ? M : AnyMachine;

export interface ClientOptions {
  readonly connectionString?: string;
  readonly pool?: pg.Pool;
  readonly schema?: string;
  /**
   * Called for errors of the client's background work: a pooled connection lost (a
   * Postgres restart), the notification connection lost or failing to reconnect, a
   * notification that could not be sent. The client retries by itself; these never crash
   * the process. Also published on `gen_durable:client:error`. What it throws is ignored.
   */
  readonly onError?: (error: unknown) => void;
}

const clientOptionsSchema = z
  .object({
    connectionString: connectionStringSchema.optional(),
    pool: z.custom<pg.Pool>((v) => v instanceof loadPg().Pool, 'must be a pg.Pool').optional(),
    schema: z.string().optional(),
    onError: z
      .custom<(error: unknown) => void>((v) => typeof v === 'function', 'must be a function')
      .optional(),
  })
  .strict()
  .refine((o) => (o.connectionString === undefined) !== (o.pool === undefined), {
    message: 'give exactly one of connectionString or pool',
    path: ['connectionString'],
  });

const waitOptionsSchema = z.object({ timeout: durationSchema }).strict();

const instanceIdSchema = z.string().refine(isInstanceId, 'is not an instance id');

const countFilterSchema = z
  .object({
    queue: z.string().optional(),
    machine: z.string().optional(),
    status: z.enum(ALL_STATUSES as [Status, ...Status[]]).optional(),
  })
  .strict();

const insertAllOptionsSchema = z
  .object({
    tx: z
      .custom<Queryable>(
        (v) => typeof (v as Queryable | undefined)?.query === 'function',
        'must be a pg client',
      )
      .optional(),
  })
  .strict();

const listFilterSchema = z
  .object({
    queue: z.string().optional(),
    machine: z.string().optional(),
    status: z.enum(ALL_STATUSES as [Status, ...Status[]]).optional(),
    afterId: instanceIdSchema.optional(),
    limit: z.number().int().min(1).max(10_000).optional(),
  })
  .strict();

/** Hooks a node gives its client so that the client shares the node's connections. */
export interface ClientInternals {
  readonly pool: pg.Pool;
  readonly ownsPool: boolean;
  readonly schema: string;
  readonly sender: NotificationSender;
  readonly listener: () => NotificationListener;
  /** Called once by `close()`, before the pool ends: closes what the client itself made. */
  readonly onClose?: () => Promise<void>;
}

export function createClient(options: ClientOptions): Client {
  const o = parseInput(clientOptionsSchema, options, '');
  const schema = validateSchemaName(o.schema ?? 'public');
  const pool = o.pool ?? new (loadPg().Pool)({ connectionString: o.connectionString, max: 10 });
  const report = (where: string, error: unknown): void => {
    publish(telemetry.clientError, () => ({ schema, where, error, message: errorMessage(error) }));
    try {
      o.onError?.(error);
    } catch {
      // A throwing callback must not turn a reported error into a crash.
    }
  };
  // Without a listener, an idle pooled connection that the server drops (a restart) makes
  // the pool emit an unhandled 'error' and Node exits. The pool discards that connection.
  const onPoolError = (error: Error): void => report('pool', error);
  pool.on('error', onPoolError);
  let listener: NotificationListener | undefined;
  const removeHandlers: Array<() => void> = [];
  return new Client({
    pool,
    ownsPool: o.pool === undefined,
    schema,
    sender: new NotificationSender(pool, schema, (e) => report('notify', e)),
    listener: () => {
      if (!listener) {
        listener = new NotificationListener(pool.options, schema);
        removeHandlers.push(listener.add({ onError: (e) => report('listener', e) }));
      }
      return listener;
    },
    onClose: async () => {
      for (const remove of removeHandlers) remove();
      await listener?.close();
      if (o.pool) pool.off('error', onPoolError); // the caller's pool lives on; ours ends next
    },
  });
}

export class Client {
  readonly schema: string;
  readonly #internals: ClientInternals;
  readonly #untrack: () => void;
  #closed = false;

  /** @internal Use `createClient()` or `node.client`. */
  constructor(internals: ClientInternals) {
    this.#internals = internals;
    this.schema = internals.schema;
    this.#untrack = trackResource(this, 'client', internals.schema);
  }

  get pool(): pg.Pool {
    return this.#internals.pool;
  }

  /**
   * Inserts one instance. With `tx`, the row exists if and only if that transaction commits.
   * `options` is typed by the definition (`state` for a machine, `args` for a job); the id
   * answered is typed with it (see `waitFor`).
   */
  async insert<M extends AnyMachine>(
    machine: M,
    options: NoInfer<InsertOptions<M>>,
  ): Promise<InsertResult<M>> {
    const row = toInsertRow(machine, options, '');
    const [result] = await this.#insertRows([row], (options as InsertOptions | null | undefined)?.tx);
    return result as unknown as InsertResult<M>;
  }

  /**
   * Inserts many instances in a bounded number of statements; one result per item, in order.
   * Each item is typed by its own `machine` (as `insert`'s options are).
   */
  async insertAll<const Items extends ReadonlyArray<{ readonly machine: AnyMachine }>>(
    items: Items & { readonly [I in keyof Items]: InsertItem<MachineOf<Items[I]>> },
    options: { tx?: Queryable } = {},
  ): Promise<{ -readonly [I in keyof Items]: InsertResult<MachineOf<Items[I]>> }> {
    const list: unknown = items;
    if (!Array.isArray(list)) throw new ValidationError('invalid_input', 'items', 'must be an array');
    const { tx } = parseInput(insertAllOptionsSchema, options, 'options');
    const rows = list.map((item: unknown, i) => {
      if (typeof item !== 'object' || item === null || Array.isArray(item)) {
        throw new ValidationError(
          'invalid_input',
          `items[${i}]`,
          'must be an object with machine and state or args',
        );
      }
      const { machine, tx: itemTx, ...rest } = item as InsertOptions & { machine?: unknown };
      if (itemTx !== undefined) {
        throw new ValidationError('invalid_input', `items[${i}].tx`, 'pass tx as insertAll(items, { tx })');
      }
      return toInsertRow(machine, rest, `items[${i}].`);
    });
    type Results = { -readonly [I in keyof Items]: InsertResult<MachineOf<Items[I]>> };
    if (rows.length === 0) return [] as unknown as Results;
    return (await this.#insertRows(rows, tx)) as unknown as Results;
  }

  async #insertRows(rows: readonly InsertRow[], tx: Queryable | undefined): Promise<InsertResult[]> {
    this.#assertOpen();
    const db = tx ?? this.#internals.pool;
    const results = new Array<InsertResult | undefined>(rows.length);
    let todo = rows.map((_, i) => i);
    for (let round = 0; todo.length > 0; round++) {
      if (round >= 10) {
        throw new GenDurableError('insert_conflict', 'insert kept racing with instances ending; gave up');
      }
      const out = await insertInstances(
        db,
        this.schema,
        todo.map((i) => rows[i]!),
      );
      // A row not inserted met an occupied key: answer with the occupant (the row whose own
      // scope holds the key, which may be one inserted a moment ago by this very batch).
      const duplicates: number[] = [];
      out.forEach((r, j) => {
        if (r.inserted) results[todo[j]!] = { id: r.id, inserted: true };
        else duplicates.push(todo[j]!);
      });
      if (duplicates.length === 0) break;
      const keys = [...new Set(duplicates.map((i) => rows[i]!.correlationKey!))];
      const occupied = new Map(
        (await findOccupiedKeys(db, this.schema, keys)).map((r) => [r.correlation_key, r.id]),
      );
      for (const i of duplicates) {
        const id = occupied.get(rows[i]!.correlationKey!);
        if (id !== undefined) results[i] = { id, inserted: false };
      }
      todo = duplicates.filter((i) => results[i] === undefined); // the occupant ended meanwhile: insert again
    }
    await this.#wake(rows, results, tx);
    publish(telemetry.insert, () => ({
      schema: this.schema,
      rows: rows.length,
      inserted: results.filter((r) => r?.inserted).length,
      transactional: tx !== undefined,
    }));
    return results as InsertResult[];
  }

  async #wake(
    rows: readonly InsertRow[],
    results: ReadonlyArray<InsertResult | undefined>,
    tx: Queryable | undefined,
  ): Promise<void> {
    // Per queue: whether work is due now, and the earliest later due time. Both are sent,
    // so a delayed row inserted beside immediate ones still gets its timer.
    const now = new Map<string, number>();
    const later = new Map<string, number>();
    rows.forEach((row, i) => {
      if (!results[i]?.inserted) return;
      const delay = row.runAt ? Math.max(0, row.runAt.getTime() - Date.now()) : row.delayMs;
      const known = later.get(row.queue);
      if (delay <= 0) now.set(row.queue, 0);
      else if (known === undefined || delay < known) later.set(row.queue, delay);
    });
    const groups = [now, later].filter((g) => g.size > 0);
    if (groups.length === 0) return;
    if (tx) {
      // Inside the caller's transaction the notification must be transactional too. Split
      // as the sender splits its own: one payload for a few dozen long queue names would be
      // over Postgres's 8000 bytes, and the caller's insert would fail with it.
      const payloads = wakePayloads(now.keys(), later);
      await sendNotifications(tx, this.schema, channelFor(this.schema), payloads);
    } else {
      for (const group of groups)
        for (const [queue, delay] of group) this.#internals.sender.wake(queue, delay);
    }
  }

  async get(target: Target | { readonly id: string }): Promise<Snapshot | null> {
    this.#assertOpen();
    const row = await this.#find(target);
    return row ? toSnapshot(row) : null;
  }

  /** Ends a live instance as `cancelled`. Returns false when it was not live. */
  async cancel(target: Target | { readonly id: string }): Promise<boolean> {
    this.#assertOpen();
    const row = await this.#find(target);
    if (!row) return false;
    const { cancelled, joined } = await cancelInstance(this.#internals.pool, this.schema, row.id);
    if (cancelled) this.#internals.sender.settled([row.id]);
    for (const parent of joined) this.#internals.sender.wake(parent.queue, 0);
    return cancelled;
  }

  /**
   * Sends a signal to a live instance's inbox, in one statement. A signal whose name the
   * instance awaits wakes it. With `dedupKey`, a redelivery while the first one is in the
   * inbox stores nothing and answers the first one's id (`duplicate: true`). With `tx`, the
   * signal exists if and only if that transaction commits (the target's row stays locked
   * until then). No live instance there: nothing is stored (`no_target`).
   */
  async signal(
    target: Target | { readonly id: string },
    name: string,
    payload: unknown = null,
    options: { readonly dedupKey?: string; readonly tx?: Queryable } = {},
  ): Promise<SignalResult> {
    this.#assertOpen();
    const { tx, ...rest } = (options ?? {}) as { tx?: unknown; dedupKey?: string };
    if (tx !== undefined && typeof (tx as Queryable | null)?.query !== 'function') {
      throw new ValidationError('invalid_input', 'options.tx', 'must be a pg client');
    }
    const request = toSignalRequest(target, name, payload, rest);
    const db = (tx as Queryable | undefined) ?? this.#internals.pool;
    const [row] = await deliverSignals(db, this.schema, [request]);
    let result: SignalResult;
    if (!row || row.instance_id === null) result = { delivered: false, reason: 'no_target' };
    else {
      const id =
        row.signal_id ?? (await findSignalByDedup(db, this.schema, row.instance_id, request.dedupKey ?? ''));
      if (id === undefined)
        throw new GenDurableError('insert_conflict', 'the signal raced a redelivery; send it again');
      result = row.duplicate ? { delivered: true, id, duplicate: true } : { delivered: true, id };
      // The row was written: it may have been hidden from a concurrent pick, or just woken.
      if (row.runnable && row.queue !== null) {
        if (tx)
          await sendNotifications(db, this.schema, channelFor(this.schema), [
            JSON.stringify({ w: { [row.queue]: 0 } }),
          ]);
        else this.#internals.sender.wake(row.queue, 0);
      }
    }
    publish(telemetry.signal, () => ({
      schema: this.schema,
      to: row?.instance_id ?? null,
      name: request.name,
      delivered: result.delivered,
      duplicate: result.delivered && result.duplicate === true,
      woke: row?.runnable === true,
      transactional: tx !== undefined,
    }));
    return result;
  }

  /**
   * Waits until the instance settles, or until `timeout` (then `busy` with a snapshot; the
   * work goes on). Settlements arrive by notification; a slow re-check covers a missed one.
   * The deadline holds even while Postgres or the notification connection is unreachable:
   * `busy` with the last snapshot read, or an `unavailable` error if none could be read.
   */
  async waitFor<M extends AnyMachine>(
    target: TypedId<M> | { readonly id: TypedId<M> },
    options: { timeout: number | string },
  ): Promise<WaitResult<ResultOf<M>>>;
  async waitFor(
    target: Target | { readonly id: string },
    options: { timeout: number | string },
  ): Promise<WaitResult>;
  async waitFor(
    target: Target | { readonly id: string },
    options: { timeout: number | string },
  ): Promise<WaitResult> {
    this.#assertOpen();
    const { timeout } = parseInput(waitOptionsSchema, options, 'options');
    const deadline = Date.now() + timeout;
    const first = await beforeDeadline(this.#find(target), deadline).catch((error: unknown) => {
      if (error instanceof GenDurableError) throw error;
      throw unavailable(target, error);
    });
    if (first === TIMED_OUT) throw unavailable(target, undefined);
    if (!first) throw new GenDurableError('not_found', `no instance ${describeTarget(target)}`);
    return waitForSettlement(this.#internals, toSnapshot(first), deadline);
  }

  /** Counts by queue, machine and status. */
  async count(
    filter: { queue?: string; machine?: string; status?: Status } = {},
  ): Promise<Array<{ queue: string; machine: string; status: Status; count: number }>> {
    this.#assertOpen();
    const f = parseInput(countFilterSchema, filter, 'filter');
    const rows = await countInstances(this.#internals.pool, this.schema, {
      queue: f.queue ?? null,
      fsm: f.machine ?? null,
      status: f.status ?? null,
    });
    return rows.map((r) => ({ queue: r.queue, machine: r.fsm, status: r.status as Status, count: r.count }));
  }

  /** Lists instances in id order; pass the last id as `afterId` for the next page. */
  async list(
    filter: { queue?: string; machine?: string; status?: Status; afterId?: string; limit?: number } = {},
  ): Promise<Snapshot[]> {
    this.#assertOpen();
    const f = parseInput(listFilterSchema, filter, 'filter');
    const rows = await listInstances(this.#internals.pool, this.schema, {
      queue: f.queue ?? null,
      fsm: f.machine ?? null,
      status: f.status ?? null,
      afterId: f.afterId ?? null,
      limit: f.limit ?? 100,
    });
    return rows.map(toSnapshot);
  }

  async #find(target: Target | { readonly id: string }): Promise<InstanceRow | undefined> {
    // An insert's result ({ id, inserted }) stands for its id.
    const { id, key } = parseTarget(target);
    return id !== null
      ? getInstanceById(this.#internals.pool, this.schema, id)
      : getInstanceByKey(this.#internals.pool, this.schema, key!);
  }

  #assertOpen(): void {
    if (this.#closed) throw new GenDurableError('closed', 'the client is closed');
  }

  /** Sends pending notifications and closes what the client owns. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#internals.sender.flush();
    await this.#internals.onClose?.();
    if (this.#internals.ownsPool) await this.#internals.pool.end();
    this.#untrack();
  }
}

export { isTerminal, isInstanceId };
