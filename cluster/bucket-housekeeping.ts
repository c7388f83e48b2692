/**
 * Bucket housekeeping (a leader service): removes rate limits no registered node declares
 * any more, and prunes token buckets that are full again and buckets of removed limits, so
 * that buckets per partition (one per tenant, say) do not pile up. A bucket that does not
 * exist counts as full, so pruning a full one changes no grant. A full batch prunes again
 * at once.
 */
import type { Queryable } from '../runtime/sql/db.js';
import { pruneBuckets, pruneUndeclaredLimits } from '../runtime/sql/rates.js';
import { PeriodicService } from '../runtime/service.js';

/** Buckets deleted by one statement at most. */
const PRUNE_BATCH = 1_000;

export class BucketHousekeeper extends PeriodicService {
  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      intervalMs: number;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  /** One round: limits no node declares any more go, then buckets full again or of those limits; the buckets pruned. */
  async runOnce(): Promise<number> {
    await pruneUndeclaredLimits(this.o.db, this.o.schema);
    let pruned = 0;
    for (;;) {
      const n = await pruneBuckets(this.o.db, this.o.schema, PRUNE_BATCH);
      pruned += n;
      if (n < PRUNE_BATCH || !this.started) return pruned;
    }
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
