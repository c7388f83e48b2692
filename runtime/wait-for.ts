/**
 * `waitFor`'s wait: until the instance settles, or the deadline (then `busy` with the last
 * snapshot; the work goes on). Settlements arrive by notification: the waiter LISTENs, then
 * marks the row watched (whoever settles it after that notifies), then re-reads it. A slow
 * safety re-check covers a lost notification, a quicker one while no LISTEN connection is
 * up. The deadline holds even while Postgres or the notification connection is unreachable.
 */
import { GenDurableError, errorMessage } from './errors.js';
import {
  type Snapshot,
  type Target,
  type WaitResult,
  describeTarget,
  isSettled,
  settledResult,
  toSnapshot,
} from './instance.js';
import type { NotificationListener, NotificationSender } from './notifications.js';
import type { Queryable } from './sql/db.js';
import { getInstanceById, watchInstance } from './sql/instances.js';

/**
 * waitFor's safety re-check while its notification connection is up: settlements arrive by
 * notification (the row is marked watched first), so this only covers a lost one.
 */
const SAFETY_RECHECK_MS = 30_000;
/** waitFor's re-check while no notification connection is up (it also retries connecting). */
const UNLISTENED_RECHECK_MS = 1_000;

/** What the wait needs of its client. */
export interface WaitDeps {
  readonly pool: Queryable;
  readonly schema: string;
  readonly sender: NotificationSender;
  readonly listener: () => NotificationListener;
}

/** Waits for the instance read as `first` (not settled, or answered at once) to settle. */
export async function waitForSettlement(o: WaitDeps, first: Snapshot, deadline: number): Promise<WaitResult> {
  const id = first.id;
  let snapshot = first;
  if (isSettled(snapshot)) return settledResult(snapshot);
  // Set by a settlement or a reconnect at any time after add(), including while a
  // re-check SELECT is running, so that no notification is ever lost.
  let signalled = false;
  let wakeUp: (() => void) | undefined;
  const signal = (): void => {
    signalled = true;
    wakeUp?.();
  };
  const listener = o.listener();
  const remove = listener.add({
    onSettled: (ids) => {
      if (ids.includes(id)) signal();
    },
    onReconnect: signal,
  });
  let listening: Promise<boolean> | undefined;
  let listens = false;
  const listen = (): Promise<boolean> =>
    (listening ??= listener.start().then(
      () => {
        listens = true;
        return true;
      },
      () => {
        listening = undefined; // try again on the next round
        return false;
      },
    ));
  let watched = false;
  let failed = false;
  try {
    for (;;) {
      if (isSettled(snapshot)) return settledResult(snapshot);
      // LISTEN before marking the row watched, and mark it before re-reading: whoever
      // settles it after the mark notifies, and the re-read sees anything before.
      if (!listens && (await beforeDeadline(listen(), deadline)) === TIMED_OUT) break;
      signalled = false;
      failed = false;
      try {
        if (!watched) {
          const watch = await beforeDeadline(watchInstance(o.pool, o.schema, id), deadline);
          if (watch === TIMED_OUT) break;
          watched = true;
          if (watch.runnableIn !== null) o.sender.wake(watch.runnableIn, 0);
        }
        const row = await beforeDeadline(getInstanceById(o.pool, o.schema, id), deadline);
        if (row === TIMED_OUT) break;
        if (!row) throw new GenDurableError('not_found', `instance ${id} no longer exists`);
        snapshot = toSnapshot(row);
        if (isSettled(snapshot)) continue;
      } catch (error) {
        if (error instanceof GenDurableError) throw error;
        // Postgres unreachable for now: keep the last snapshot and try again soon.
        failed = true;
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      if (signalled) continue;
      await new Promise<void>((resolve) => {
        const every = listens && !failed ? SAFETY_RECHECK_MS : UNLISTENED_RECHECK_MS;
        const timer = setTimeout(resolve, Math.min(left, every));
        wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wakeUp = undefined;
    }
    return { status: 'busy', snapshot };
  } finally {
    remove();
  }
}

export const TIMED_OUT = Symbol('timed out');

/** `promise`, or TIMED_OUT once `deadline` passes (the promise goes on; its failure is ignored). */
export function beforeDeadline<T>(promise: Promise<T>, deadline: number): Promise<T | typeof TIMED_OUT> {
  const left = deadline - Date.now();
  if (left <= 0) {
    promise.catch(() => undefined);
    return Promise.resolve(TIMED_OUT);
  }
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<typeof TIMED_OUT>((resolve) => {
      timer = setTimeout(() => {
        promise.catch(() => undefined);
        resolve(TIMED_OUT);
      }, left);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function unavailable(target: Target | { readonly id: string }, cause: unknown): GenDurableError {
  return new GenDurableError(
    'unavailable',
    `could not read instance ${describeTarget(target)}: ${cause === undefined ? 'no answer from Postgres before the deadline' : errorMessage(cause)}`,
    { cause },
  );
}
