/**
 * What a commit of step results sets in motion, decided in one place: which queues to wake
 * (now or at a due time), which instances settled (their waiters are told), which outcomes
 * were stale, which await deadlines the leader's stager must hear of. The node carries it
 * out (notifications, its feeders).
 */
import type { Committed } from './commit.js';
import type { FlushEntry } from './flusher.js';
import { assertNever } from './outcome.js';
import type { ClaimedRow } from './sql/claim.js';

export interface Consequences {
  /** Settled instances someone waits for (or may: stale terminal outcomes). */
  readonly settled: string[];
  /** Outcomes that did not apply (their claim no longer held). */
  readonly stale: string[];
  /** Queues of stale outcomes: this node looks again (the row may be runnable). */
  readonly recheck: string[];
  /** Queues with work runnable now (0) or in this many ms, for every node. */
  readonly wakes: Array<readonly [queue: string, delayMs: number]>;
  /** Await deadlines set: work due in a queue then (the stager fires them). */
  readonly deadlines: Array<readonly [queue: string, delayMs: number]>;
  /** Outcomes run ahead that applied: the rows their next steps start on, here (with `inbox` known). */
  readonly continued: Array<{ readonly queue: string; readonly row: ClaimedRow }>;
  /**
   * Continuations of run-ahead outcomes that did not apply. Had the outcome committed after
   * all (a retry after a lost reply), the row is still claimed here on the continuation's
   * token: a release gives it back uncharged (and matches nothing otherwise).
   */
  readonly orphaned: Array<{ readonly queue: string; readonly row: ClaimedRow }>;
}

export function consequencesOf(entries: readonly FlushEntry[], committed: Committed): Consequences {
  const { applied } = committed;
  const out: Consequences = {
    settled: [],
    stale: [],
    recheck: [],
    wakes: [],
    deadlines: [],
    continued: [],
    orphaned: [],
  };
  for (const entry of entries) {
    const r = entry.result;
    if (!applied.has(entry.id)) {
      // Reaped meanwhile, or committed by an earlier try whose reply was lost: in the
      // latter case the row may be runnable again, so look; or settled, so tell waiters
      // (they re-read the row: a notification too many costs one read).
      out.stale.push(entry.id);
      out.recheck.push(entry.queue);
      if (entry.continuation) out.orphaned.push({ queue: entry.queue, row: entry.continuation });
      if (r.kind === 'done' || r.kind === 'stop') out.settled.push(entry.id);
      continue;
    }
    // Only a `next` carries one (the flusher drops it from an outcome it turns into a stop).
    if (entry.continuation) {
      // Still claimed here, its key's slot held: nothing for anyone else to pick.
      // The continuation is this commit's own (built by `continuationOf`): set in place, as
      // a spread that overrides a field costs V8 microseconds per row.
      const row = entry.continuation;
      row.has_inbox = committed.withInbox.has(entry.id);
      out.continued.push({ queue: entry.queue, row });
      continue;
    }
    // A step of a concurrency key ended: rows of that key the picks skipped may run now.
    if (entry.concurrencyKey) out.wakes.push([entry.queue, 0]);
    switch (r.kind) {
      case 'done':
      case 'stop':
        if (applied.get(entry.id)) out.settled.push(entry.id);
        break;
      case 'release':
        out.wakes.push([entry.queue, 0]);
        break;
      case 'next':
      case 'retry':
        out.wakes.push([entry.queue, r.delayMs]);
        break;
      case 'await':
        if (r.timeoutMs !== null) out.deadlines.push([entry.queue, Math.max(1, r.timeoutMs)]);
        break;
      case 'spawn':
        break;
      default:
        assertNever(r, 'step result');
    }
  }
  // Parents joined, parked rows a signal already woke, inserted children, signal targets.
  out.wakes.push(...committed.wakes);
  return out;
}
