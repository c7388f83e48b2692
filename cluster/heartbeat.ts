/**
 * The node heartbeat: one statement per interval marks the node alive and extends the leases
 * of the steps it still runs (`claims()`), and only those: a claim the node gave up on
 * lapses and is reaped. A node whose row disappeared (declared dead elsewhere) registers
 * again.
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
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  async runOnce(): Promise<{ alive: boolean; extended: number }> {
    const beat = await heartbeat(this.o.db, this.o.schema, this.o.nodeId, this.o.leaseMs, this.o.claims());
    if (!beat.alive) await this.o.register();
    return beat;
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
