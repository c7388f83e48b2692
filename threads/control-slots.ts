/**
 * The task control blocks of one pool (`TaskControl`): one shared buffer, handed to each of
 * its threads as it starts, whose slots tasks take while they run. Allocating and sending a
 * shared buffer per task costs more than a no-op step. A pool runs at most `concurrency`
 * tasks at once (each carries at least one step); should every slot be taken all the same,
 * a task gets a block of its own, sent with it.
 */
import { CONTROL_BYTES, THREAD, RUNNING, type TaskControl, taskControl } from './protocol.js';

export interface ControlSlot {
  /** -1: a block of its own, in `own`. */
  readonly slot: number;
  readonly own?: SharedArrayBuffer;
  readonly control: TaskControl;
}

export class ControlSlots {
  readonly buffer: SharedArrayBuffer;
  readonly #free: number[];
  readonly #controls: TaskControl[];

  constructor(count: number) {
    this.buffer = new SharedArrayBuffer(count * CONTROL_BYTES);
    this.#controls = Array.from({ length: count }, (_, i) => taskControl(this.buffer, i));
    this.#free = Array.from({ length: count }, (_, i) => count - 1 - i);
  }

  /** A cleared block for a task. */
  take(): ControlSlot {
    const slot = this.#free.pop();
    if (slot === undefined) {
      const own = new SharedArrayBuffer(CONTROL_BYTES);
      return { slot: -1, own, control: taskControl(own) };
    }
    const control = this.#controls[slot]!;
    Atomics.store(control.flags, RUNNING, 0);
    Atomics.store(control.flags, THREAD, 0);
    Atomics.store(control.startedAt, 0, 0n);
    return { slot, control };
  }

  /** The task settled: its worker writes to the block no more. */
  release(taken: ControlSlot): void {
    if (taken.slot >= 0) this.#free.push(taken.slot);
  }
}
