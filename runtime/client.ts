/**
 * The client: inserting, addressing, waiting for and cancelling instances. Needs no worker
 * role; a joined node exposes one as `node.client`.
 */
import pg from 'pg';
import { z } from 'zod';
import { durationSchema } from './duration.js';
import { GenDurableError, ValidationError, parseInput } from './errors.js';
import { type InsertOptions, toInsertRow } from './insert-options.js';
import type { AnyMachine } from './machine.js';
import { NotificationListener, NotificationSender } from './notifications.js';
import { trackResource } from './resources.js';
import { publish, telemetry } from './telemetry.js';
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
  watchInstance,
} from './sql/instances.js';
import { channelFor } from './notifications.js';
import { sendNotifications } from './sql/notify.js';
import { ALL_STATUSES, type Status, isTerminal } from './status.js';

/** An instance id, or `{ key }` for the instance its correlation key addresses. */
export type Target = string | { readonly key: string };

export interface InsertResult {
  readonly id: string;
  /** False when the correlation key was occupied: `id` is the existing instance. */
  readonly inserted: boolean;
}

export interface Snapshot {
  readonly id: string;
  readonly machine: string;
  readonly version: number;
  readonly status: Status;
  readonly step: string;
  readonly state: unknown;
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly queue: string;
  readonly priority: number;
  readonly eligibleAt: Date;
  readonly result: unknown;
  readonly error: string | null;
  readonly errors: readonly unknown[];
  readonly correlationKey: string | null;
  readonly concurrencyKey: string | null;
  readonly parentId: string | null;
  readonly lockedBy: string | null;
  readonly leaseExpiresAt: Date | null;
  readonly insertedAt: Date;
  readonly updatedAt: Date;
}

export type WaitResult =
  | { readonly status: 'done'; readonly result: unknown; readonly snapshot: Snapshot }
  | { readonly status: 'failed' | 'cancelled'; readonly error: string | null; readonly snapshot: Snapshot }
  | { readonly status: 'busy'; readonly snapshot: Snapshot };

export interface ClientOptions {
  readonly connectionString?: string;
  readonly pool?: pg.Pool;
  readonly schema?: string;
}

const clientOptionsSchema = z
  .object({
    connectionString: z.string().min(1).optional(),
    pool: z.custom<pg.Pool>((v) => v instanceof pg.Pool, 'must be a pg.Pool').optional(),
    schema: z.string().optional(),
  })
  .strict()
  .refine((o) => (o.connectionString === undefined) !== (o.pool === undefined), {
    message: 'give exactly one of connectionString or pool',
    path: ['connectionString'],
  });

const waitOptionsSchema = z.object({ timeout: durationSchema }).strict();
/** An instance id: a positive Postgres bigint, as a string. */
export function isInstanceId(value: unknown): boolean {
  return (
    typeof value === 'string' && /^[1-9]\d{0,18}$/.test(value) && BigInt(value) <= 9_223_372_036_854_775_807n
  );
}

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
}

export function createClient(options: ClientOptions): Client {
  const o = parseInput(clientOptionsSchema, options, '');
  const schema = validateSchemaName(o.schema ?? 'public');
  const pool = o.pool ?? new pg.Pool({ connectionString: o.connectionString, max: 10 });
  let listener: NotificationListener | undefined;
  return new Client({
    pool,
    ownsPool: o.pool === undefined,
    schema,
    sender: new NotificationSender(pool, schema, () => undefined),
    listener: () => (listener ??= new NotificationListener(pool.options, schema)),
  });
}

export class Client {
  readonly schema: string;
  readonly #internals: ClientInternals;
  readonly #untrack: () => void;
  #listener: NotificationListener | undefined;
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

  /** Inserts one instance. With `tx`, the row exists if and only if that transaction commits. */
  async insert<M extends AnyMachine>(machine: M, options: InsertOptions): Promise<InsertResult> {
    const row = toInsertRow(machine, options, '');
    const [result] = await this.#insertRows([row], (options as InsertOptions | null | undefined)?.tx);
    return result!;
  }

  /** Inserts many instances in a bounded number of statements; one result per item, in order. */
  async insertAll(
    items: ReadonlyArray<InsertOptions & { readonly machine: AnyMachine }>,
    options: { tx?: Queryable } = {},
  ): Promise<InsertResult[]> {
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
    if (rows.length === 0) return [];
    return this.#insertRows(rows, tx);
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
      // Inside the caller's transaction the notification must be transactional too.
      const payloads = groups.map((w) => JSON.stringify({ w: Object.fromEntries(w) }));
      await sendNotifications(tx, this.schema, channelFor(this.schema), payloads);
    } else {
      for (const group of groups)
        for (const [queue, delay] of group) this.#internals.sender.wake(queue, delay);
    }
  }

  async get(target: Target): Promise<Snapshot | null> {
    this.#assertOpen();
    const row = await this.#find(target);
    return row ? toSnapshot(row) : null;
  }

  /** Ends a live instance as `cancelled`. Returns false when it was not live. */
  async cancel(target: Target): Promise<boolean> {
    this.#assertOpen();
    const row = await this.#find(target);
    if (!row) return false;
    const id = await cancelInstance(this.#internals.pool, this.schema, row.id);
    if (id) this.#internals.sender.settled([id]);
    return id !== undefined;
  }

  /**
   * Waits until the instance settles, or until `timeout` (then `busy` with a snapshot; the
   * work goes on). Settlements arrive by notification; a slow re-check covers a missed one.
   */
  async waitFor(target: Target, options: { timeout: number | string }): Promise<WaitResult> {
    this.#assertOpen();
    const { timeout } = parseInput(waitOptionsSchema, options, 'options');
    const deadline = Date.now() + timeout;
    const first = await this.#find(target);
    if (!first) throw new GenDurableError('not_found', `no instance ${describeTarget(target)}`);
    const id = first.id;
    let wakeUp: (() => void) | undefined;
    const listener = this.#internals.listener();
    this.#listener = listener;
    const remove = listener.add({
      onSettled: (ids) => {
        if (ids.includes(id)) wakeUp?.();
      },
      onReconnect: () => wakeUp?.(),
    });
    try {
      await listener.start();
      const { runnableIn } = await watchInstance(this.#internals.pool, this.schema, id);
      if (runnableIn !== null) this.#internals.sender.wake(runnableIn, 0);
      for (;;) {
        const row = await getInstanceById(this.#internals.pool, this.schema, id);
        if (!row) throw new GenDurableError('not_found', `instance ${id} no longer exists`);
        const snapshot = toSnapshot(row);
        if (snapshot.status === 'done') return { status: 'done', result: snapshot.result, snapshot };
        if (snapshot.status === 'failed' || snapshot.status === 'cancelled') {
          return { status: snapshot.status, error: snapshot.error, snapshot };
        }
        const left = deadline - Date.now();
        if (left <= 0) return { status: 'busy', snapshot };
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 2_000));
          wakeUp = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wakeUp = undefined;
      }
    } finally {
      remove();
    }
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

  async #find(target: Target): Promise<InstanceRow | undefined> {
    if (typeof target === 'string') {
      if (!isInstanceId(target))
        throw new ValidationError('invalid_input', 'target', `"${target}" is not an instance id`);
      return getInstanceById(this.#internals.pool, this.schema, target);
    }
    if (
      typeof target === 'object' &&
      target !== null &&
      typeof target.key === 'string' &&
      target.key.length > 0
    ) {
      return getInstanceByKey(this.#internals.pool, this.schema, target.key);
    }
    throw new ValidationError('invalid_input', 'target', 'must be an instance id or { key }');
  }

  #assertOpen(): void {
    if (this.#closed) throw new GenDurableError('closed', 'the client is closed');
  }

  /** Sends pending notifications and closes what the client owns. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#internals.sender.flush();
    if (this.#internals.ownsPool) {
      await this.#listener?.close();
      await this.#internals.pool.end();
    }
    this.#untrack();
  }
}

function describeTarget(target: Target): string {
  return typeof target === 'string' ? target : `with key ${target.key}`;
}

function toSnapshot(row: InstanceRow): Snapshot {
  return {
    id: row.id,
    machine: row.fsm,
    version: row.version,
    status: row.status as Status,
    step: row.step,
    state: row.state,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    queue: row.queue,
    priority: row.priority,
    eligibleAt: row.eligible_at,
    result: row.result,
    error: row.last_error,
    errors: row.errors,
    correlationKey: row.correlation_key,
    concurrencyKey: row.concurrency_key,
    parentId: row.parent_id,
    lockedBy: row.locked_by,
    leaseExpiresAt: row.lease_expires_at,
    insertedAt: row.inserted_at,
    updatedAt: row.updated_at,
  };
}

export { isTerminal };
