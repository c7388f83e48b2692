/**
 * The reaper: rows whose lease expired (their node died or hung) go back to runnable with
 * `attempt + 1`, or to `failed` when attempts are spent. Until leader election lands every
 * node runs it; that is safe because the statement skips rows another reaper holds.
 */
import type { Queryable } from '../runtime/sql/db.js';
import { reapExpiredLeases } from '../runtime/sql/loop.js';
import { PeriodicService } from '../runtime/service.js';
import { publish, telemetry } from '../runtime/telemetry.js';

export class Reaper extends PeriodicService {
  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      intervalMs: number;
      batch: number;
      onReaped: (rows: Array<{ id: string; queue: string; status: string }>) => void;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  /** Reaps until a batch comes back short; returns how many rows were reaped. */
  async runOnce(): Promise<number> {
    let total = 0;
    for (;;) {
      const rows = await reapExpiredLeases(this.o.db, this.o.schema, this.o.batch);
      total += rows.length;
      if (rows.length > 0) {
        publish(telemetry.reaperReaped, () => ({ count: rows.length, ids: rows.map((r) => r.id) }));
        this.o.onReaped(rows);
      }
      if (rows.length < this.o.batch) return total;
    }
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
