/**
 * The reaper: rows whose lease expired (their node died or hung) go back to runnable with
 * `attempt + 1`, eligible after the machine's backoff, or to `failed` when attempts are
 * spent. A leader service: only the leader runs it (`LeaderServices`). Two leaders at once
 * (a hand-over, a partition) are still safe: each claim is reaped under the guard of the
 * claim it was found with, skipping rows another transaction holds.
 */
import { defaultBackoff } from '../runtime/backoff.js';
import { parseDuration } from '../runtime/duration.js';
import type { MachineRegistry } from '../runtime/registry.js';
import type { Queryable } from '../runtime/sql/db.js';
import {
  type AbandonedClaim,
  abandonClaims,
  findExpiredLeases,
  findNodeClaims,
} from '../runtime/sql/loop.js';
import { pruneDeadNodes } from '../runtime/sql/nodes.js';
import { PeriodicService } from '../runtime/service.js';
import { publish, telemetry } from '../runtime/telemetry.js';

export interface ReapedRow {
  readonly id: string;
  readonly queue: string;
  readonly status: string;
  /** Ms until the row is eligible again (its machine's backoff). */
  readonly eligibleIn: number;
}

/**
 * The retry delay of an abandoned claim: the machine's `backoff(attempt)` when this node
 * knows the machine (a backoff that throws or returns garbage falls back), else the default.
 */
export function abandonedDelay(registry: MachineRegistry, claim: AbandonedClaim): number {
  const backoff = registry.definitionOf(claim.fsm, claim.version)?.backoff;
  if (backoff) {
    try {
      const ms = parseDuration(backoff(claim.attempt));
      if (typeof ms === 'number') return ms;
    } catch {
      // the default below
    }
  }
  return defaultBackoff(claim.attempt);
}

/** Reaps the given claims with their machines' backoff; returns the rows reaped. */
export async function reapClaims(
  db: Queryable,
  schema: string,
  registry: MachineRegistry,
  claims: readonly AbandonedClaim[],
  why: { reason: string; expired: boolean },
): Promise<ReapedRow[]> {
  if (claims.length === 0) return [];
  const withDelays = claims.map((c) => ({ id: c.id, claim: c.claim, delayMs: abandonedDelay(registry, c) }));
  return abandonClaims(db, schema, withDelays, why.reason, why.expired);
}

/** Claims left under `nodeId` by an earlier process with that id, reaped when a node starts. */
export async function reapNodeClaims(
  db: Queryable,
  schema: string,
  registry: MachineRegistry,
  nodeId: string,
): Promise<ReapedRow[]> {
  const claims = await findNodeClaims(db, schema, nodeId);
  return reapClaims(db, schema, registry, claims, {
    reason: 'claim abandoned by an earlier process with the same node id',
    expired: false,
  });
}

export class Reaper extends PeriodicService {
  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      registry: MachineRegistry;
      intervalMs: number;
      batch: number;
      /** Node rows whose heartbeat is older than this are pruned (the node died). */
      deadNodeMs: number;
      onReaped: (rows: readonly ReapedRow[]) => void;
      onError: (error: unknown) => void;
    },
  ) {
    super(o.intervalMs);
  }

  /** Prunes dead nodes' rows, then reaps until a batch comes back short; returns how many rows were reaped. */
  async runOnce(): Promise<number> {
    await pruneDeadNodes(this.o.db, this.o.schema, this.o.deadNodeMs);
    let total = 0;
    for (;;) {
      const found = await findExpiredLeases(this.o.db, this.o.schema, this.o.batch);
      const rows = await reapClaims(this.o.db, this.o.schema, this.o.registry, found, {
        reason: 'lease expired',
        expired: true,
      });
      total += rows.length;
      if (rows.length > 0) {
        publish(telemetry.reaperReaped, () => ({ count: rows.length, ids: rows.map((r) => r.id) }));
        this.o.onReaped(rows);
      }
      // Short, or nothing reapable among what was found (locked, or taken meanwhile): done.
      if (found.length < this.o.batch || rows.length === 0) return total;
    }
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
