/**
 * A node: one member of the cluster, embedded in a user's process. It composes the runtime's
 * loop (feeders, flusher, client, notifications) with a thread pool per queue and the
 * periodic services: the heartbeat on every node; the elector, which campaigns for
 * leadership and, while this node leads, runs the leader services (the reaper, GC).
 *
 * A step's path: feeder claims rows (ahead of free slots, see `Feeder`) → pool runs them on
 * a worker thread (each queue's pair is a `QueueRuntime`) → the result reaches this thread:
 * its slot is free (the next buffered row starts, the feeder claims again) → results gather
 * in the flusher → one commit → local and remote queues woken, settled instances announced,
 * steps run ahead started on the claims still held.
 */
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { loadPg } from '../runtime/pg.js';
import { Client } from '../runtime/client.js';
import { z } from 'zod';
import { durationSchema } from '../runtime/duration.js';
import { describeConnection } from '../runtime/connection.js';
import { GenDurableError, errorMessage, parseInput } from '../runtime/errors.js';
import { isTransient } from '../runtime/sql/errors.js';
import { type CommitResult, type FlushEntry, Flusher } from '../runtime/flusher.js';
import { NotificationListener, NotificationSender } from '../runtime/notifications.js';
import { machineKey } from '../runtime/machine.js';
import { MachineRegistry } from '../runtime/registry.js';
import { trackResource } from '../runtime/resources.js';
import type { ClaimedRow } from '../runtime/sql/claim.js';
import { releaseClaims } from '../runtime/sql/loop.js';
import { declareRateLimits } from '../runtime/sql/rates.js';
import { Claimer } from '../runtime/claimer.js';
import { PickPool } from '../runtime/sql/pick-pool.js';
import { warnUnservedQueues } from './unserved-queues.js';
import { consequencesOf } from '../runtime/commit-consequences.js';
import { deregisterNode, registerNode } from '../runtime/sql/nodes.js';
import { publish, telemetry } from '../runtime/telemetry.js';
import { migrate } from '../migrations/migrate.js';
import { Elector } from './elector.js';
import { QueueRuntime } from './queue-runtime.js';
import { GarbageCollector } from './gc.js';
import { BucketHousekeeper } from './bucket-housekeeping.js';
import { Heartbeat } from './heartbeat.js';
import { LeaderServices } from './leader-services.js';
import type { NodeConfig } from './options.js';
import { Stager } from './stager.js';
import { type ReapedRow, Reaper, deadNodeAfter, reapNodeClaims } from './reaper.js';

export interface StopOptions {
  /** How long in-flight steps may take to finish and commit before their rows are released. */
  readonly timeout?: number | string;
}

const stopOptionsSchema = z.object({ timeout: durationSchema.default(30_000) }).strict();

export class GenDurableNode {
  readonly id: string;
  readonly client: Client;
  readonly #config: NodeConfig;
  readonly #db: pg.Pool;
  /** The plain pick's connections (`pick-pool.ts`): always this node's own. */
  readonly #pickDb: PickPool;
  readonly #ownsDb: boolean;
  readonly #queues = new Map<string, QueueRuntime>();
  readonly #flusher: Flusher;
  readonly #sender: NotificationSender;
  readonly #listener: NotificationListener;
  readonly #heartbeat: Heartbeat;
  readonly #elector: Elector;
  readonly #stager: Stager;
  readonly #registry: MachineRegistry;
  readonly #untrack: () => void;
  /** `name@version` of the machines this node claims, or null when it claims any (a resolve hook). */
  readonly #servable: string[] | null;
  readonly #claimer: Claimer;
  /** Claims in flight on this node (id → claim token): running, or waiting to be committed. */
  readonly #claims = new Map<string, string>();
  #stopping: Promise<void> | undefined;

  /** @internal Use `Cluster.join()`. */
  constructor(config: NodeConfig) {
    this.#config = config;
    this.id = config.nodeId ?? `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    this.#registry = new MachineRegistry(config.machines, config.resolve);
    this.#servable = config.resolve
      ? null
      : this.#registry.definitions.map((d) => machineKey(d.name, d.version));
    this.#ownsDb = config.pool === undefined;
    this.#db =
      config.pool ??
      new (loadPg().Pool)({
        connectionString: config.connectionString,
        max: config.poolSize,
        application_name: this.#connectionName(''),
      });
    this.#db.on('error', (error) => this.#reportError('pool', error));
    // One connection per queue at most: a queue has one pick in flight at a time.
    this.#pickDb = new PickPool(
      {
        ...this.#db.options,
        max: Math.max(1, Object.keys(config.queues).length),
        application_name: this.#connectionName('pick'),
      },
      (error) => this.#reportError('pool', error),
    );
    const schema = config.schema;
    this.#claimer = new Claimer({
      db: this.#db,
      pickDb: this.#pickDb,
      schema,
      nodeId: this.id,
      leaseMs: config.lease,
      machines: this.#servable,
      gates: Object.fromEntries(Object.entries(config.concurrencyLimits).map(([g, { limit }]) => [g, limit])),
    });
    this.#sender = new NotificationSender(this.#db, schema, (e) => this.#reportError('notify', e));
    this.#listener = new NotificationListener(
      { ...this.#db.options, application_name: this.#connectionName('listener') },
      schema,
    );
    this.client = new Client({
      pool: this.#db,
      ownsPool: false,
      schema,
      sender: this.#sender,
      listener: () => this.#listener,
    });
    this.#flusher = new Flusher({
      db: this.#db,
      schema,
      nodeId: this.id,
      maxBatch: config.flushBatch,
      // Past this, the leases have long expired: the reaper hands the rows on (attempt + 1).
      retryLimitMs: Math.max(2 * config.lease, 60_000),
      // Kept for nothing: a row that ends done is deleted as it ends, where nothing reads it.
      deleteDone: config.gc !== false && config.gc.retention === 0,
      unreported: () => {
        let n = 0;
        for (const q of this.#queues.values()) n += q.feeder.running + q.feeder.buffered;
        return n;
      },
      onFlushed: (entries, committed) => this.#afterFlush(entries, committed),
      onAbandoned: (entries, error) => this.#afterAbandon(entries, error),
      onError: (e) => this.#reportError('flush', e),
    });
    for (const [queue, q] of Object.entries(config.queues)) {
      const runtime = new QueueRuntime({
        nodeId: this.id,
        queue,
        config: q,
        registry: this.#registry,
        graceMs: config.timeoutGrace,
        pollIntervalMs: config.pollInterval,
        claim: async (limit) => {
          const claimed = await this.#claimer.claim(queue, limit);
          // Under lease from now on, buffered or running: the heartbeat extends it.
          for (const row of claimed.rows) this.#claims.set(row.id, row.claim);
          // Rows the pick booked into a rate limit's line or put off: work due later.
          if (claimed.wakeInMs !== null) this.#wakeQueue(queue, claimed.wakeInMs);
          return claimed;
        },
        push: (entry) => this.#flusher.push(entry),
        onError: (where, e) => this.#reportError(where, e),
      });
      this.#queues.set(queue, runtime);
    }
    this.#heartbeat = new Heartbeat({
      db: this.#db,
      schema,
      nodeId: this.id,
      intervalMs: config.heartbeat,
      leaseMs: config.lease,
      claims: () => [...this.#claims.keys()],
      register: () => this.#register(),
      leader: () => {
        const key = this.#elector.key;
        return key === undefined ? undefined : { key, report: this.#elector.watch() };
      },
      onError: (e) => this.#reportError('heartbeat', e),
    });
    const reaper = new Reaper({
      db: this.#db,
      schema,
      registry: this.#registry,
      intervalMs: config.reapInterval,
      batch: 1_000,
      // Three missed heartbeats, at least 10 s: that node is gone (see `Reaper`).
      deadNodeMs: deadNodeAfter(config.heartbeat),
      onReaped: (rows) => this.#afterReap(rows),
      onError: (e) => this.#reportError('reaper', e),
    });
    const gc =
      config.gc === false
        ? []
        : [
            new GarbageCollector({
              db: this.#db,
              schema,
              nodeId: this.id,
              retentionMs: config.gc.retention,
              batch: config.gc.batch,
              intervalMs: config.gc.interval,
              onError: (e) => this.#reportError('gc', e),
            }),
          ];
    this.#stager = new Stager({
      db: this.#db,
      schema,
      sweepIntervalMs: config.pollInterval,
      wake: (queue) => this.#wakeQueue(queue, 0),
      onError: (e) => this.#reportError('stager', e),
    });
    this.#elector = new Elector({
      nodeId: this.id,
      schema,
      connection: { ...this.#db.options, application_name: this.#connectionName('elector') },
      campaignIntervalMs: config.campaignInterval,
      services: new LeaderServices([
        reaper,
        this.#stager,
        ...gc,
        new BucketHousekeeper({
          db: this.#db,
          schema,
          intervalMs: config.bucketHousekeepingInterval,
          onError: (e) => this.#reportError('bucket housekeeping', e),
        }),
      ]),
      onVacated: () => this.#sender.vacated(),
      onError: (e) => this.#reportError('elector', e),
    });
    this.#untrack = trackResource(this, 'node', this.id);
  }

  /**
   * The `application_name` of this node's connections in `role` ('' for its pool): the
   * user's, when their pool names its connections (a name in the connection string wins in
   * pg anyway), else one naming the node, for operators reading `pg_stat_activity`.
   */
  #connectionName(role: string): string {
    const user = this.#ownsDb ? undefined : this.#db.options.application_name;
    return user ?? `gen_durable ${role ? `${role} ` : ''}${this.id}`.slice(0, 63);
  }

  /** Whether this node holds the leader lock (and runs the leader services) right now. */
  get isLeader(): boolean {
    return this.#elector.isLeader;
  }

  get queues(): string[] {
    return [...this.#queues.keys()];
  }

  /** Steps claimed by this node and not yet committed, per queue. */
  inFlight(queue: string): number {
    return this.#queues.get(queue)?.feeder.inFlight ?? 0;
  }

  /** Thread count of a queue's pool (dead threads are replaced). */
  threads(queue: string): number {
    return this.#queues.get(queue)?.pool.threadCount ?? 0;
  }

  /** @internal Migrates, registers and starts every service. */
  async start(): Promise<void> {
    try {
      if (this.#config.migrate) await migrate({ pool: this.#db, schema: this.#config.schema });
      await this.#register();
      // Claims still held under this id belong to an earlier process that died with it.
      this.#afterReap(await reapNodeClaims(this.#db, this.#config.schema, this.#registry, this.id));
      this.#listener.add({
        // Work due later is the stager's (on the leader), not a timer on every node.
        onWake: (queue, delayMs) =>
          delayMs > 0 ? this.#stager.heard(queue, delayMs) : this.#wakeLocal(queue, 0),
        onVacated: () => this.#elector.runNow(),
        onReconnect: () => {
          publish(telemetry.notifierReconnected, () => ({ node: this.id }));
          for (const { feeder } of this.#queues.values()) feeder.wake();
        },
        onError: (e) => this.#reportError('listener', e),
      });
      await this.#listener.start();
      this.#flusher.start();
      this.#heartbeat.start();
      this.#elector.start();
      // Threads start with the node; a queue claims once its threads can run what it claims.
      await Promise.all([...this.#queues.values()].map(({ pool }) => pool.ready));
      for (const { feeder } of this.#queues.values()) feeder.start();
      warnUnservedQueues(this.id, this.queues, this.#registry.definitions);
      publish(telemetry.nodeJoined, () => ({ node: this.id, queues: this.queues }));
    } catch (error) {
      await this.#shutdown(0);
      if (!isTransient(error)) throw error;
      throw new GenDurableError(
        'unavailable',
        `could not connect to Postgres at ${describeConnection(this.#db.options)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  #afterReap(rows: readonly ReapedRow[]): void {
    for (const r of rows) if (r.status === 'runnable') this.#wakeQueue(r.queue, r.eligibleIn);
    this.#sender.settled(rows.filter((r) => r.status === 'failed').map((r) => r.id));
  }

  /** Registers the node, then its rate limits (on every registration: a pruned node's limits may be gone). */
  async #register(): Promise<void> {
    const { schema, rateLimits } = this.#config;
    await registerNode(this.#db, schema, {
      id: this.id,
      host: hostname(),
      pid: process.pid,
      queues: this.queues,
      machines: this.#servable,
      rateLimits: Object.keys(rateLimits),
    });
    await declareRateLimits(this.#db, schema, rateLimits);
  }

  #afterFlush(entries: readonly FlushEntry[], committed: CommitResult): void {
    const { settled, stale, recheck, wakes, deadlines, continued, orphaned } = consequencesOf(
      entries,
      committed,
    );
    for (const queue of recheck) this.#wakeLocal(queue, 0);
    for (const [queue, delayMs] of wakes) this.#wakeQueue(queue, delayMs);
    // A deadline is the stager's to fire (on the leader, told by the notification).
    for (const [queue, delayMs] of deadlines) this.#sender.wake(queue, delayMs);
    for (const { from, delivered } of committed.signals) {
      publish(telemetry.signal, () => ({
        node: this.id,
        from,
        to: delivered.instance_id,
        id: delivered.signal_id,
        delivered: delivered.instance_id !== null,
        duplicate: delivered.duplicate,
        woke: delivered.runnable,
      }));
    }
    publish(telemetry.flush, () => ({
      node: this.id,
      outcomes: entries.length,
      applied: committed.applied.size,
      continued: continued.length,
    }));
    if (stale.length > 0) publish(telemetry.outcomeStale, () => ({ node: this.id, ids: stale }));
    this.#sender.settled(settled);
    for (const { queue, row } of orphaned) this.#queues.get(queue)?.feeder.giveBack([row]);
    const loading = this.#runAhead(continued);
    this.#finishClaims(entries, loading);
  }

  /**
   * Starts the next steps of outcomes run ahead, on the claims this node still holds (the
   * heartbeat extends them). Rows a signal was ever stored for load their inbox first; they
   * count as uncommitted until then. Returns their ids.
   */
  #runAhead(continued: ReadonlyArray<{ queue: string; row: ClaimedRow }>): Set<string> {
    const loading = new Set<string>();
    const byQueue = new Map<string, { ready: ClaimedRow[]; actors: ClaimedRow[] }>();
    for (const { queue, row } of continued) {
      this.#claims.set(row.id, row.claim);
      let q = byQueue.get(queue);
      if (!q) byQueue.set(queue, (q = { ready: [], actors: [] }));
      if (row.has_inbox) {
        q.actors.push(row);
        loading.add(row.id);
      } else q.ready.push(row);
    }
    for (const [queue, { ready, actors }] of byQueue) {
      const feeder = this.#queues.get(queue)?.feeder;
      if (!feeder) continue;
      feeder.resume(ready);
      if (actors.length === 0) continue;
      this.#claimer.withActorState(actors).then(
        (rows) => {
          feeder.committed(rows.length);
          feeder.resume(rows);
        },
        (error: unknown) => {
          // Released (uncharged) by `withActorState`: back to the queue for any node.
          this.#reportError(`run-ahead ${queue}`, error);
          for (const row of actors) if (this.#claims.get(row.id) === row.claim) this.#claims.delete(row.id);
          feeder.committed(actors.length);
          this.#wakeQueue(queue, 0);
        },
      );
    }
    return loading;
  }

  /**
   * Outcomes the flusher could not commit at all: their slots are freed and their leases no
   * longer extended, so the reaper hands the rows on (attempt + 1) once the leases lapse.
   */
  #afterAbandon(entries: readonly FlushEntry[], error: unknown): void {
    this.#reportError('flush abandoned', error);
    publish(telemetry.outcomeAbandoned, () => ({
      node: this.id,
      ids: entries.map((e) => e.id),
      message: errorMessage(error),
    }));
    this.#finishClaims(entries);
  }

  /**
   * These claims are no longer in flight here (committed, stale or given up): the heartbeat
   * stops extending them and their slots are free, so the feeders may claim again.
   */
  #finishClaims(entries: readonly FlushEntry[], loading: ReadonlySet<string> = new Set()): void {
    const freed = new Map<string, number>();
    for (const entry of entries) {
      // Run ahead and loading its inbox: counted once loaded (see `#runAhead`).
      if (loading.has(entry.id)) continue;
      freed.set(entry.queue, (freed.get(entry.queue) ?? 0) + 1);
      if (this.#claims.get(entry.id) === entry.claim) this.#claims.delete(entry.id);
    }
    for (const [queue, n] of freed) this.#queues.get(queue)?.feeder.committed(n);
  }

  /** Work became runnable in `queue`: wake this node's feeder directly, and other nodes by notification. */
  #wakeQueue(queue: string, delayMs: number): void {
    this.#wakeLocal(queue, delayMs);
    if (this.#queues.size > 0) this.#sender.wake(queue, delayMs);
  }

  #wakeLocal(queue: string, delayMs: number): void {
    const feeder = this.#queues.get(queue)?.feeder;
    if (!feeder) return;
    if (delayMs > 0) feeder.wakeIn(delayMs);
    else feeder.wake();
  }

  #reportError(where: string, error: unknown): void {
    publish(telemetry.error, () => ({ node: this.id, where, error, message: errorMessage(error) }));
  }

  /**
   * Graceful drain: stop claiming, let in-flight steps finish and commit for up to
   * `timeout`, give the rest back without charging an attempt, deregister, close threads
   * and connections. Idempotent.
   */
  async stop(options: StopOptions = {}): Promise<void> {
    const { timeout } = parseInput(stopOptionsSchema, options, 'options');
    this.#stopping ??= this.#shutdown(timeout);
    return this.#stopping;
  }

  async #shutdown(timeoutMs: number): Promise<void> {
    const schema = this.#config.schema;
    // Leadership first, so that another node takes over while this one drains.
    const resigned = this.#elector.stop().catch((e: unknown) => this.#reportError('resign', e));
    await Promise.all([...this.#queues.values()].map(({ feeder }) => feeder.stop()));
    const deadline = Date.now() + timeoutMs;
    const busy = (): boolean => [...this.#queues.values()].some(({ feeder }) => feeder.inFlight > 0);
    while (busy() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    const forced = busy();
    // Out of time: tell the steps still running (their abort signal fires); their outcomes
    // are no longer committed, their rows go back to the queue uncharged.
    if (forced) for (const { pool } of this.#queues.values()) pool.abortRunning();
    await this.#flusher.stop();
    await Promise.all([this.#heartbeat.stop(), resigned]);
    const released = await releaseClaims(this.#db, schema, this.id, null).catch((e: unknown) => {
      this.#reportError('release', e);
      return [];
    });
    // A moment for aborted steps to clean up before their threads are terminated.
    if (forced) await new Promise((resolve) => setTimeout(resolve, 100));
    await Promise.all([...this.#queues.values()].map(({ pool }) => pool.close()));
    for (const queue of new Set(released.map((r) => r.queue))) this.#sender.wake(queue, 0);
    await deregisterNode(this.#db, schema, this.id).catch((e: unknown) => this.#reportError('deregister', e));
    await this.client.close();
    await this.#sender.flush();
    await this.#listener.close();
    await this.#pickDb.end();
    if (this.#ownsDb) await this.#db.end();
    publish(telemetry.nodeLeft, () => ({ node: this.id, released: released.length }));
    this.#untrack();
  }
}
