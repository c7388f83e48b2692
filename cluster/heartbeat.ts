/**
 * The node heartbeat: one statement per interval marks the node alive and extends the leases
 * of the steps it still runs (`claims()`), and only those: a claim the node gave up on
 * lapses and is reaped. A node whose row disappeared (declared dead elsewhere) registers
 * again. The same statement reports who holds the leader lock (`leader()`, the elector's
 * key; `onLeader`), so the election is watched at no cost of its own.
 */
import type { Queryable } from '../runtime/sql/db.js';
import { heartbeat } from '../runtime/sql/loop.js';
import { PeriodicService } from '../runtime/service.js';

export class Heartbeat extends PeriodicService {
  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      nodeId: string;
      intervalMs: number;
      leaseMs: number;
      /** Ids of the claims in flight on this node (running, or waiting to be committed). */
      claims: () => string[];
      register: () => Promise<void>;
      /**
       * Asked as a beat begins: the leader lock's key (once the elector knows it) and where to
       * report the backend holding it (or null) as of this beat.
       */
      leader: () => { key: bigint; report: (pid: number | null) => void } | undefined;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  async runOnce(): Promise<{ alive: boolean; extended: number; leaderPid: number | null }> {
    const leader = this.o.leader();
    const beat = await heartbeat(this.o.db, this.o.schema, {
      nodeId: this.o.nodeId,
      leaseMs: this.o.leaseMs,
      ids: this.o.claims(),
      leaderKey: leader?.key,
    });
    leader?.report(beat.leaderPid);
    if (!beat.alive) await this.o.register();
    return beat;
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
