/**
 * The lifecycle of an instance row (`gen_durable.status`):
 *
 *   insert ──► runnable ──pick──► executing ──outcome──► runnable        (next, retry)
 *                 ▲                   │                 awaiting_signal (awaitSignals)
 *                 │                   │                 awaiting_children (spawn)
 *                 └── lease expired ──┤                 done | failed   (terminal)
 *                     or drain        │
 *   cancel(): any live status ──────────────────────────► cancelled      (terminal)
 *
 *   awaiting_signal   ──► runnable   a signal it awaits arrives (or was there), or its deadline
 *   awaiting_children ──► runnable   its last running child ends (done, failed, cancelled)
 *
 * Rule for writers: the pick skips locked rows (SKIP LOCKED), so any statement that writes a
 * runnable row without claiming it may hide it from a concurrent pick; such a writer wakes
 * the row's queue after it commits (see `watchInstance`).
 */
export const STATUS = {
  runnable: 'runnable',
  executing: 'executing',
  awaitingSignal: 'awaiting_signal',
  awaitingChildren: 'awaiting_children',
  done: 'done',
  failed: 'failed',
  cancelled: 'cancelled',
} as const;

export type Status = (typeof STATUS)[keyof typeof STATUS];

export const LIVE_STATUSES: readonly Status[] = Object.freeze([
  'runnable',
  'executing',
  'awaiting_signal',
  'awaiting_children',
]);
export const TERMINAL_STATUSES: readonly Status[] = Object.freeze(['done', 'failed', 'cancelled']);
export const ALL_STATUSES: readonly Status[] = Object.freeze([...LIVE_STATUSES, ...TERMINAL_STATUSES]);

export function isTerminal(status: Status): boolean {
  return TERMINAL_STATUSES.includes(status);
}
