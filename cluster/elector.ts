/**
 * Leader election: the leader is the node whose dedicated session holds the install's
 * advisory lock (`leaderLockKey(database, schema)` in `runtime/sql/leader.ts`). The session
 * is one `pg.Client` of the elector's own, never a pool connection: a session lock lives
 * and dies with its backend, and a pool would hand that backend to other work. Followers
 * never wait on the lock (`pg_advisory_lock` would hold a snapshot, and with it VACUUM,
 * for as long as it waited): they try it when there is reason to.
 *
 * What drives a round, so that an idle cluster sends almost nothing:
 * - the node's **heartbeat**, which reports the backend holding the lock (`watch()`): a
 *   follower that sees the lock free campaigns at once; a leader that sees it free or held
 *   by another backend resigns;
 * - a **vacancy notice**: a leader that resigns or stops says so on the schema's
 *   notification channel (`onVacated`) and followers campaign at once (`runNow()`);
 * - a slow fallback round every `campaignIntervalMs` (try, or confirm the lock in
 *   `pg_locks`), should both of the above fail.
 *
 * Modes:
 * - **follower**: a round opens a session if it has none and tries `pg_try_advisory_lock`
 *   (never waits). Won → leader.
 * - **leader**: the leader services run (`LeaderServices`, a new term per election).
 * - **resigning**: any error of the session, its end (a terminated backend, a Postgres
 *   restart), a confirmation or heartbeat that finds the lock gone: the services are told to
 *   stop at once, `gen_durable:leader:resigned` is published, the session is discarded (its
 *   socket destroyed, so Postgres drops the backend and any lock with it) and the elector
 *   is a follower again, with a fresh session.
 * - **stopping** (`stop()`): the services stop, the lock is released explicitly
 *   (`pg_advisory_unlock`, then the session closes), the vacancy is announced, and a
 *   follower takes over at once.
 *
 * The trust window. A leader whose process dies (SIGKILL, crash) loses the lock as soon as
 * the kernel closes its socket: a follower takes over at its next heartbeat. A leader whose
 * *host* vanishes silently (power, partition) leaves a backend Postgres thinks alive:
 * Postgres ends it when its TCP keepalives go unanswered; the session sets them to 5 s idle
 * + 3 × 2 s probes, so another node leads within about 11 s plus a heartbeat (a leader on a
 * Unix socket shares Postgres's host). Until the cut-off leader's own heartbeat or session
 * tells it, two nodes may both believe they lead. Leadership is an efficiency device, not a
 * correctness one: every leader service is safe to run twice at once.
 */
import type pg from 'pg';
import type { ClientConfig } from 'pg';
import { loadPg } from '../runtime/pg.js';
import { dropConnection } from '../runtime/connection.js';
import {
  holdsLeaderLock,
  leaderLockKey,
  prepareLeaderSession,
  releaseLeaderLock,
  tryLeaderLock,
} from '../runtime/sql/leader.js';
import { PeriodicService } from '../runtime/service.js';
import { errorMessage } from '../runtime/errors.js';
import { publish, telemetry } from '../runtime/telemetry.js';
import type { LeaderServices } from './leader-services.js';

/** Server-side TCP keepalives of the lock session (seconds): bounds failover off a vanished host. */
const SERVER_KEEPALIVE = { idleS: 5, intervalS: 2, count: 3 } as const;
const CONNECT_TIMEOUT_MS = 10_000;
/** A statement of the lock session that does not come back in this long is a lost session. */
const QUERY_TIMEOUT_MS = 10_000;

interface Session {
  readonly client: pg.Client;
  /** The session's backend, once prepared. */
  pid: number | undefined;
  /** Whether this session holds the lock (so a clean stop releases it). */
  locked: boolean;
}

export interface ElectorOptions {
  readonly nodeId: string;
  readonly schema: string;
  /** Where the lock session connects (the node's pool's options, with its `application_name`). */
  readonly connection: ClientConfig;
  readonly campaignIntervalMs: number;
  readonly services: LeaderServices;
  /** The lock was given up or lost: tell the other nodes, so that one campaigns at once. */
  readonly onVacated: () => void;
  readonly onError: (error: unknown) => void;
}

export class Elector extends PeriodicService {
  readonly #o: ElectorOptions;
  readonly #config: ClientConfig;
  #session: Session | undefined;
  /** The lock's key, once a session learnt the database (set before any session is in use). */
  #key: bigint | undefined;
  /** The services' term while leading, else undefined. */
  #term: number | undefined;
  #stopping = false;

  constructor(o: ElectorOptions) {
    super(o.campaignIntervalMs);
    this.#o = o;
    this.#config = {
      ...o.connection,
      keepAlive: true,
      keepAliveInitialDelayMillis: 5_000,
      connectionTimeoutMillis: o.connection.connectionTimeoutMillis || CONNECT_TIMEOUT_MS,
      // A confirmation that does not come back in time is a lost lock.
      query_timeout: QUERY_TIMEOUT_MS,
    };
  }

  get isLeader(): boolean {
    return this.#term !== undefined;
  }

  /** The leader lock's key, once known (the heartbeat reports its holder). */
  get key(): bigint | undefined {
    return this.#key;
  }

  /**
   * Called as a look at the lock's holder begins; the returned function takes the backend
   * that holds it (or null). A look that began before the latest election or session
   * change is ignored, so a heartbeat in flight across an election cannot unseat the new
   * leader. Free and not leading → campaign now; leading but not held by this session →
   * resign.
   */
  watch(): (holderPid: number | null) => void {
    const session = this.#session;
    const term = this.#term;
    return (holderPid) => {
      if (this.#stopping || session !== this.#session || term !== this.#term) return;
      if (term === undefined) {
        if (holderPid === null) this.runNow();
      } else if (session && holderPid !== session.pid) {
        this.#lose(
          session,
          new Error(
            holderPid === null
              ? 'the heartbeat found the leader lock free'
              : `the heartbeat found the leader lock held by backend ${holderPid}`,
          ),
        );
      }
    };
  }

  override start(): void {
    this.#stopping = false;
    super.start();
  }

  /** One campaign round (follower) or confirmation (leader); returns whether it leads. */
  async runOnce(): Promise<boolean> {
    if (this.#stopping) return false;
    const session = this.#session ?? (await this.#open());
    try {
      if (this.#term !== undefined) {
        if (!(await holdsLeaderLock(session.client, this.#key!))) {
          this.#lose(session, new Error('the leader lock is no longer held by this session'));
        }
      } else if (await tryLeaderLock(session.client, this.#key!)) {
        session.locked = true;
        // Lost meanwhile (its error arrived first), or stopping: the lock goes with the session.
        if (this.#session === session && !this.#stopping) this.#elect();
      }
    } catch (error) {
      this.#lose(session, error);
      throw error;
    }
    return this.isLeader;
  }

  async #open(): Promise<Session> {
    const client = new (loadPg().Client)(this.#config);
    const session: Session = { client, pid: undefined, locked: false };
    // Attached before connecting and never removed: no error of this connection may crash
    // the process (a Postgres restart, a terminated backend).
    client.on('error', (error: Error) => {
      if (this.#session === session) this.#o.onError(error);
      this.#lose(session, error);
    });
    client.on('end', () => this.#lose(session, new Error('the leader lock session ended')));
    try {
      await client.connect();
      const { database, pid } = await prepareLeaderSession(client, SERVER_KEEPALIVE);
      this.#key = leaderLockKey(database, this.#o.schema);
      session.pid = pid;
    } catch (error) {
      dropConnection(client);
      throw error;
    }
    if (this.#stopping) {
      dropConnection(client);
      throw new Error('the elector is stopping');
    }
    this.#session = session;
    return session;
  }

  #elect(): void {
    this.#term = this.#o.services.elect();
    publish(telemetry.leaderElected, () => ({ node: this.#o.nodeId }));
  }

  /** Resigns at once (if leading) and discards `session`, if it is still the current one. */
  #lose(session: Session, error: unknown): void {
    if (this.#session !== session) return;
    this.#session = undefined;
    dropConnection(session.client);
    if (session.locked && !this.#stopping) this.#o.onVacated();
    void this.#resign(`lost the leader lock session: ${errorMessage(error)}`);
    // Campaign again soon (a fresh session), not only at the fallback interval.
    this.runNow();
  }

  #resign(reason: string): Promise<void> {
    const term = this.#term;
    if (term === undefined) return Promise.resolve();
    this.#term = undefined;
    const stopped = this.#o.services.resign(term);
    publish(telemetry.leaderResigned, () => ({ node: this.#o.nodeId, reason }));
    return stopped.catch((e: unknown) => this.#o.onError(e));
  }

  /** Resigns, releases the lock and closes the session. Idempotent. */
  override async stop(): Promise<void> {
    this.#stopping = true;
    await super.stop();
    await this.#resign('stopping');
    const session = this.#session;
    this.#session = undefined;
    if (!session) return;
    try {
      if (session.locked) await releaseLeaderLock(session.client, this.#key!);
      await session.client.end();
    } catch {
      // The session is going anyway: its backend's end releases the lock.
      dropConnection(session.client);
    }
    if (session.locked) this.#o.onVacated();
  }

  protected onError(error: unknown): void {
    this.#o.onError(error);
  }
}
