/**
 * How a node claims a batch of one queue: the plain claim, or the guarded claim for queues
 * whose rows carry concurrency keys or rate limits (all queues once gates are configured;
 * otherwise a queue switches when the plain claim meets such a row and is refused); a pick
 * refused because another node admitted a step of the same key at the same moment is
 * retried; the inboxes and children of the batch's actor rows are loaded with one more
 * statement. A guarded pick says when the rows it booked or put off fall due.
 */
import { isConcurrencyConflict, needsGuardedClaim } from './sql/errors.js';
import type { Queryable } from './sql/db.js';
import { type ClaimedRow, claimBatch, claimGuarded, loadActorState } from './sql/claim.js';
import { releaseClaims } from './sql/loop.js';
import type { RateReport } from './sql/rates.js';
import { publish, telemetry } from './telemetry.js';

/** Tries of a pick refused by `gen_durable_concurrency_active` before it is an error. */
const CONTENDED_TRIES = 5;

export interface ClaimerOptions {
  readonly db: Queryable;
  /** Where the plain pick runs (`pick-pool.ts`), on the same database as `db`; default `db`. */
  readonly pickDb?: Queryable;
  readonly schema: string;
  readonly nodeId: string;
  readonly leaseMs: number;
  /** `name@version` of the machines the node claims, or null for any. */
  readonly machines: readonly string[] | null;
  /** Concurrency gates: gate name → limit. */
  readonly gates: Readonly<Record<string, number>>;
}

export interface Claimed {
  readonly rows: ClaimedRow[];
  /** The pick found as many rows as it asked for (claimed or put off): more may be due. */
  readonly full: boolean;
  /** Rows the pick booked into a rate limit's line (or put off) fall due in this many ms: pick again then. */
  readonly wakeInMs: number | null;
}

export class Claimer {
  readonly #o: ClaimerOptions;
  /** Queues whose picks use the guarded claim. */
  readonly #guarded = new Set<string>();
  readonly #allGuarded: boolean;

  constructor(options: ClaimerOptions) {
    this.#o = options;
    this.#allGuarded = Object.keys(options.gates).length > 0;
  }

  /** Claims up to `limit` due rows of `queue`, with their actor state. */
  async claim(queue: string, limit: number): Promise<Claimed> {
    const picked = await this.#pick(queue, limit);
    const { rows } = picked;
    publish(telemetry.pick, () => ({ node: this.#o.nodeId, queue, requested: limit, claimed: rows.length }));
    return { ...picked, rows: await this.withActorState(rows) };
  }

  async #pick(queue: string, limit: number): Promise<Claimed> {
    const { db, pickDb, schema, nodeId, leaseMs, machines, gates } = this.#o;
    for (let attempt = 1; ; attempt++) {
      const guarded = this.#allGuarded || this.#guarded.has(queue);
      try {
        if (!guarded) {
          const rows = await claimBatch(pickDb ?? db, schema, {
            queue,
            limit,
            nodeId,
            leaseMs,
            machines,
            sameDatabase: pickDb && db,
          });
          return { rows, full: rows.length === limit, wakeInMs: null };
        }
        const { rows, report } = await claimGuarded(db, schema, {
          queue,
          limit,
          nodeId,
          leaseMs,
          machines,
          gates,
        });
        this.#report(queue, report);
        // Rows booked into a line or put off took places in the batch: more may be due.
        return { rows, full: rows.length + (report?.passed ?? 0) >= limit, wakeInMs: report?.nextMs ?? null };
      } catch (error) {
        if ((needsGuardedClaim(error) || isConcurrencyConflict(error)) && !guarded) {
          // The queue has rows with concurrency keys or rate limits: from now on its picks honour them.
          this.#guarded.add(queue);
          continue;
        }
        // Another node claimed a step of the same key at the same moment: the index refused
        // the second; the next pick sees the first and skips that key.
        if (!isConcurrencyConflict(error) || attempt >= CONTENDED_TRIES) throw error;
        publish(telemetry.concurrencyContended, () => ({ node: nodeId, queue, attempt }));
      }
    }
  }

  /** Publishes the pick's rate report. */
  #report(queue: string, report: RateReport | null): void {
    if (report === null) return;
    const node = this.#o.nodeId;
    const names = new Map<string, string[]>();
    for (const u of report.unknown ?? []) names.set(u.name, [...(names.get(u.name) ?? []), u.id]);
    for (const [name, ids] of names) publish(telemetry.rateLimitUnknown, () => ({ node, queue, name, ids }));
    for (const o of report.oversized ?? []) {
      const { name, partition, id, weight, burst } = o;
      publish(telemetry.rateLimitThrottled, () => ({
        node,
        queue,
        name,
        partition,
        wanted: weight,
        granted: 0,
        waitMs: null,
        reason: 'oversized',
        burst,
        ids: [id],
      }));
    }
    for (const t of report.throttled ?? [])
      publish(telemetry.rateLimitThrottled, () => ({ node, queue, ...t }));
  }

  /**
   * The inboxes and children of the actor rows among `rows` (claimed by this node), in one
   * statement; should it fail, the claims of all of `rows` are released (uncharged).
   */
  async withActorState(rows: ClaimedRow[]): Promise<ClaimedRow[]> {
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
