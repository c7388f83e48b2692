/**
 * How a node claims a batch of one queue: the plain claim, or the keyed claim for queues
 * whose rows carry concurrency keys (all queues once gates are configured; otherwise a
 * queue switches when the plain claim meets a keyed row and is refused); a pick refused
 * because another node admitted a step of the same key at the same moment is retried; the
 * inboxes and children of the batch's actor rows are loaded with one more statement.
 */
import { isConcurrencyConflict, isKeyedRow } from './sql/errors.js';
import type { Queryable } from './sql/db.js';
import { type ClaimedRow, claimBatch, loadActorState } from './sql/claim.js';
import { releaseClaims } from './sql/loop.js';
import { publish, telemetry } from './telemetry.js';

/** Tries of a pick refused by `gen_durable_concurrency_active` before it is an error. */
const CONTENDED_TRIES = 5;

export interface ClaimerOptions {
  readonly db: Queryable;
  readonly schema: string;
  readonly nodeId: string;
  readonly leaseMs: number;
  /** `name@version` of the machines the node claims, or null for any. */
  readonly machines: readonly string[] | null;
  /** Concurrency gates: gate name → limit. */
  readonly gates: Readonly<Record<string, number>>;
}

export class Claimer {
  readonly #o: ClaimerOptions;
  /** Queues whose picks use the keyed claim. */
  readonly #keyed = new Set<string>();
  readonly #allKeyed: boolean;

  constructor(options: ClaimerOptions) {
    this.#o = options;
    this.#allKeyed = Object.keys(options.gates).length > 0;
  }

  /** Claims up to `limit` due rows of `queue`, with their actor state. */
  async claim(queue: string, limit: number): Promise<ClaimedRow[]> {
    const rows = await this.#pick(queue, limit);
    publish(telemetry.pick, () => ({ node: this.#o.nodeId, queue, requested: limit, claimed: rows.length }));
    return this.#withActorState(rows);
  }

  async #pick(queue: string, limit: number): Promise<ClaimedRow[]> {
    const { db, schema, nodeId, leaseMs, machines, gates } = this.#o;
    for (let attempt = 1; ; attempt++) {
      const keyed = this.#allKeyed || this.#keyed.has(queue);
      try {
        return await claimBatch(db, schema, { queue, limit, nodeId, leaseMs, machines, keyed, gates });
      } catch (error) {
        if ((isKeyedRow(error) || isConcurrencyConflict(error)) && !keyed) {
          // The queue has rows with concurrency keys: from now on its picks honour them.
          this.#keyed.add(queue);
          continue;
        }
        // Another node claimed a step of the same key at the same moment: the index refused
        // the second; the next pick sees the first and skips that key.
        if (!isConcurrencyConflict(error) || attempt >= CONTENDED_TRIES) throw error;
        publish(telemetry.concurrencyContended, () => ({ node: nodeId, queue, attempt }));
      }
    }
  }

  /** One statement for the batch's actor rows; should it fail, the claims are released (uncharged). */
  async #withActorState(rows: ClaimedRow[]): Promise<ClaimedRow[]> {
    const actors = rows.filter((r) => r.has_inbox || r.joined);
    if (actors.length === 0) return rows;
    const { db, schema, nodeId } = this.#o;
    const ids = actors.map((r) => r.id);
    const loaded = await loadActorState(db, schema, ids).catch(async (error: unknown) => {
      await releaseClaims(
        db,
        schema,
        nodeId,
        rows.map((r) => r.id),
      ).catch(() => undefined);
      throw error;
    });
    const byId = new Map(loaded.map((l) => [l.id, l]));
    return rows.map((r) => {
      const l = byId.get(r.id);
      return l ? { ...r, inbox: l.inbox, children: l.children } : r;
    });
  }
}
