/**
 * The node heartbeat: one statement per interval marks the node alive and extends every lease
 * it holds. A node whose row disappeared (declared dead elsewhere) registers again.
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
      register: () => Promise<void>;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  async runOnce(): Promise<{ alive: boolean; extended: number }> {
    const beat = await heartbeat(this.o.db, this.o.schema, this.o.nodeId, this.o.leaseMs);
    if (!beat.alive) await this.o.register();
    return beat;
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
