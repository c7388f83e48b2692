/**
 * How long a step takes its worker, per machine version, and how many threads a batch of
 * steps is therefore worth (`taskCount`). A batch of quick steps runs in less time on the
 * thread it lands on than a second task's hop would cost; slow steps are spread.
 */

/**
 * How much of a thread's time a task should carry before a batch is spread over one more
 * thread. A hop to a thread and back costs tens of microseconds of CPU on each side and
 * wakes a thread; a batch of quick steps runs in less on the thread it lands on.
 */
export const TASK_WORTH_US = 1_000;

/**
 * How many tasks (threads) a batch of `items` steps is split into, given how long its steps
 * took their worker of late (`usPerStep`, the mean over the batch; undefined while one of its
 * machines has no estimate, before its first reply or after a thread died under it): every
 * thread the batch has steps for while that is unknown, else as many as carry
 * `TASK_WORTH_US` each, at least one.
 */
export function taskCount(items: number, threads: number, usPerStep: number | undefined): number {
  const most = Math.max(1, Math.min(threads, items));
  if (usPerStep === undefined) return most;
  return Math.max(1, Math.min(most, Math.floor((items * usPerStep) / TASK_WORTH_US)));
}

/** Weight of a faster batch in the running estimate of a step's time (a slower one counts at once). */
const STEP_TIME_WEIGHT = 0.2;

interface StepOf {
  readonly machine: string;
  readonly version: number;
}

/**
 * A step's time in its worker of late, per machine version (µs per step of the batches that
 * replied): up at once when a batch was slower, down by `STEP_TIME_WEIGHT` when faster.
 * Keyed by name, then version: nothing is built per step to look one up.
 */
export class StepTimes {
  readonly #us = new Map<string, Map<number, number>>();

  /** The mean time of a step of `items`, or undefined if a machine of them has none yet. */
  meanOf(items: readonly StepOf[]): number | undefined {
    if (items.length === 0) return undefined;
    let sum = 0;
    for (const item of items) {
      const us = this.#us.get(item.machine)?.get(item.version);
      if (us === undefined) return undefined;
      sum += us;
    }
    return sum / items.length;
  }

  /** A batch of `items` replied after `sample` µs per step. */
  learn(items: readonly StepOf[], sample: number): void {
    if (!Number.isFinite(sample) || sample < 0) return;
    // Each machine version of the batch learns once, however many of its steps it had.
    const learnt = new Map<string, Set<number>>();
    for (const item of items) {
      let done = learnt.get(item.machine);
      if (!done) learnt.set(item.machine, (done = new Set<number>()));
      if (done.has(item.version)) continue;
      done.add(item.version);
      let versions = this.#us.get(item.machine);
      if (!versions) this.#us.set(item.machine, (versions = new Map<number, number>()));
      const before = versions.get(item.version);
      versions.set(
        item.version,
        before === undefined || sample > before ? sample : before + STEP_TIME_WEIGHT * (sample - before),
      );
    }
  }

  /** How long these steps take is not known any more (a thread died under them). */
  forget(items: readonly StepOf[]): void {
    for (const item of items) this.#us.get(item.machine)?.delete(item.version);
  }
}
