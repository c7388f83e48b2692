/**
 * The reaper: rows whose lease expired (their node died or hung) go back to runnable with
 * `attempt + 1`, eligible after the machine's backoff, or to `failed` when attempts are
 * spent. A leader service: only the leader runs it (`LeaderServices`). Two leaders at once
 * (a hand-over, a partition) are still safe: each claim is reaped under the guard of the
 * claim it was found with, skipping rows another transaction holds.
 *
 * Dead-node reclaim, in the same round and through the same path: the claims of a node
 * whose heartbeat is older than `deadNodeMs` (or whose node row is gone) are reaped at once,
 * without waiting out their leases, and then the dead node's row is pruned. The node
 * configures `deadNodeMs` as `max(3 × heartbeat, 10 s)`: three missed beats, and never so
 * short that a busy machine's late beat reads as death. A node wrongly declared dead loses
 * its claims (its outcomes no longer commit) and registers again at its next heartbeat.
 *
 * Reclaim waits until this reaper has watched the cluster for `deadNodeMs` without a failed
 * round: after a Postgres restart or an outage every node's last heartbeat is old, and a
 * leader elected (or recovered) just then would otherwise take every claim in the cluster
 * before the live nodes had a chance to beat again.
 */
import { defaultBackoff } from '../runtime/backoff.js';
import { parseDuration } from '../runtime/duration.js';
import type { MachineRegistry } from '../runtime/registry.js';
import type { Queryable } from '../runtime/sql/db.js';
import {
  type AbandonedClaim,
  abandonClaims,
  findDeadNodeClaims,
  findExpiredLeases,
  findNodeClaims,
} from '../runtime/sql/loop.js';
import { PeriodicService } from '../runtime/service.js';
import { publish, telemetry } from '../runtime/telemetry.js';

export interface ReapedRow {
  readonly id: string;
  readonly queue: string;
  readonly status: string;
  /** Ms until the row is eligible again (its machine's backoff). */
  readonly eligibleIn: number;
  /** Not reaped itself: a parent whose last running child this reaping ended (runnable now). */
  readonly joined: boolean;
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

/** How long without a heartbeat a node is dead: three missed beats, at least 10 s. */
export function deadNodeAfter(heartbeatMs: number): number {
  return Math.max(3 * heartbeatMs, 10_000);
}

export class Reaper extends PeriodicService {
  readonly #clock: () => number;
  /** Since when (by `clock`) this reaper has watched without a failed round. */
  #watchingSince: number;

  constructor(
    private readonly o: {
      db: Queryable;
      schema: string;
      registry: MachineRegistry;
      intervalMs: number;
      batch: number;
      /** A node whose heartbeat is older than this is dead: its claims are reaped, its row pruned. */
      deadNodeMs: number;
      onReaped: (rows: readonly ReapedRow[]) => void;
      onError: (error: unknown) => void;
      /** Milliseconds of a monotonic clock (default `performance.now`); a seam for tests. */
      clock?: () => number;
    },
  ) {
    super(o.intervalMs);
    this.#clock = o.clock ?? (() => performance.now());
    this.#watchingSince = this.#clock();
  }

  override start(): void {
    this.#watchingSince = this.#clock();
    super.start();
  }

  /**
   * Reaps dead nodes' claims and prunes their rows (once this reaper has watched for
   * `deadNodeMs`), then reaps expired leases until a batch comes back short; returns how
   * many rows were reaped.
   */
  async runOnce(): Promise<number> {
    try {
      let total = 0;
      if (this.#clock() - this.#watchingSince >= this.o.deadNodeMs) {
        // Prunes the dead nodes' rows too.
        total += await this.#drain('dead_node', () =>
          findDeadNodeClaims(this.o.db, this.o.schema, this.o.deadNodeMs, this.o.batch),
        );
      }
      return (
        total + (await this.#drain('lease', () => findExpiredLeases(this.o.db, this.o.schema, this.o.batch)))
      );
    } catch (error) {
      this.#watchingSince = this.#clock();
      throw error;
    }
  }

  async #drain(cause: 'lease' | 'dead_node', find: () => Promise<AbandonedClaim[]>): Promise<number> {
    let total = 0;
    for (;;) {
      const found = await find();
      const rows = await reapClaims(this.o.db, this.o.schema, this.o.registry, found, {
        reason: cause === 'lease' ? 'lease expired' : 'node dead (no heartbeat)',
        expired: cause === 'lease',
      });
      const reaped = rows.filter((r) => !r.joined);
      total += reaped.length;
      if (rows.length > 0) {
        publish(telemetry.reaperReaped, () => ({
          count: reaped.length,
          ids: reaped.map((r) => r.id),
          cause,
        }));
        this.o.onReaped(rows);
      }
      // Short, or nothing reapable among what was found (locked, or taken meanwhile): done.
      if (found.length < this.o.batch || reaped.length === 0) return total;
    }
  }

  protected onError(error: unknown): void {
    this.o.onError(error);
  }
}
