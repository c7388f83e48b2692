/**
 * The test side of `gate(ctx, label)` in `fixtures/actor-machines.ts`: steps announce that
 * they reached a gate on a BroadcastChannel (worker threads of this process) and wait there
 * until the test opens it.
 */
import { BroadcastChannel } from 'node:worker_threads';
import { afterAll } from 'vitest';
import { GATE_CHANNEL } from '../fixtures/actor-machines.js';
import { eventually } from './eventually.js';

export interface Gates {
  /** Waits until instance `id`'s step announced it reached gate `label`. */
  reached(id: string, label: string): Promise<void>;
  /** Lets instance `id`'s step through gate `label`. */
  open(id: string, label: string): void;
}

export function useGates(): Gates {
  const channel = new BroadcastChannel(GATE_CHANNEL);
  const arrived: Array<{ id: string; label: string }> = [];
  channel.onmessage = (event) =>
    void arrived.push((event as MessageEvent).data as { id: string; label: string });
  afterAll(() => channel.close());
  return {
    reached: async (id, label) => {
      await eventually(
        () => Promise.resolve(arrived.some((a) => a.id === id && a.label === label) ? true : undefined),
        `the step of ${id} at gate ${label}`,
      );
    },
    open: (id, label) => channel.postMessage({ id, label, go: true }),
  };
}
