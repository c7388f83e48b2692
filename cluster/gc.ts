/**
 * GC: terminal rows (done, failed, cancelled) whose last write is older than `retentionMs`
 * are deleted, `batch` at a time, every `intervalMs`; a full batch sweeps again at once, so a
 * backlog drains without waiting for the next round. Each batch costs about `batch` rows read
 * (`deleteFinished`). A finished child whose parent still awaits its children is kept.
 *
 * A leader service: only the leader runs it (`LeaderServices`). Two leaders at once are
 * safe: each batch skips rows the other holds, and a row deleted twice is deleted once.
 */
import type { Queryable } from '../runtime/sql/db.js';
import { deleteFinished } from '../runtime/sql/gc.js';
import { PeriodicService } from '../runtime/service.js';
import { publish, telemetry } from '../runtime/telemetry.js';

export interface GcSweep {
  /** Rows deleted by the round. */
  readonly deleted: number;
  /** Delete statements the round ran (one more than its full batches). */
  readonly batches: number;
}

export class GarbageCollector extends PeriodicService {
  /** Set by `stop()`: a round in progress ends after its current batch. */
  #halted = false;

  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      nodeId: string;
      retentionMs: number;
      batch: number;
      intervalMs: number;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  override start(): void {
    this.#halted = false;
    super.start();
  }

  override async stop(): Promise<void> {
    this.#halted = true;
    await super.stop();
  }

  /** Deletes batches until one comes back short (or the service is stopped); returns what it deleted. */
  async runOnce(): Promise<GcSweep> {
    let deleted = 0;
    let batches = 0;
    for (;;) {
      const n = await deleteFinished(this.o.db, this.o.schema, this.o.retentionMs, this.o.batch);
      deleted += n;
      batches++;
      if (n < this.o.batch || this.#halted) break;
    }
    publish(telemetry.gcSwept, () => ({ node: this.o.nodeId, deleted, batches }));
    return { deleted, batches };
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
