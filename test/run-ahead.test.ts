/**
 * Inline run-ahead on a real node: a `next` that runs ahead is committed first, then its
 * step starts on the claim already held, with no pick; a next the pick must admit (a rate
 * limit, a new concurrency key, a delay) goes back to the queue; a continuation is handed
 * the signals of its own commit; a continuation whose outcome lost its claim never runs.
 */
import diagnostics from 'node:diagnostics_channel';
import { BroadcastChannel } from 'node:worker_threads';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import {
  AHEAD_GATE,
  aheadMachines,
  chain,
  gated,
  guarded,
  optedIn,
  optedOut,
  plain,
  selfSignal,
} from './fixtures/run-ahead-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('run_ahead');
const { join } = useNodes(db);
const queues = { ahead: { concurrency: 8, threads: 2 } };
const rateLimits = { 'ahead-limit': { allowed: 1_000, period: '1s' } };

/** Rows claimed by picks of queue `ahead`, and steps continued by run-ahead, since the last reset. */
const counts = { claimed: 0, continued: 0 };
const onPick = (m: unknown) => {
  const e = m as { queue: string; claimed: number };
  if (e.queue === 'ahead') counts.claimed += e.claimed;
};
const onFlush = (m: unknown) => void (counts.continued += (m as { continued: number }).continued);
diagnostics.subscribe('gen_durable:pick', onPick);
diagnostics.subscribe('gen_durable:flush', onFlush);
afterAll(() => {
  diagnostics.unsubscribe('gen_durable:pick', onPick);
  diagnostics.unsubscribe('gen_durable:flush', onFlush);
});
beforeEach(() => {
  process.env.RUN_AHEAD_URL = db.url;
  process.env.RUN_AHEAD_SCHEMA = db.schema;
  counts.claimed = 0;
  counts.continued = 0;
});

async function runAll(
  node: Awaited<ReturnType<typeof join>>,
  machine: typeof plain,
  n: number,
): Promise<unknown[]> {
  const ids = await node.client.insertAll(Array.from({ length: n }, () => ({ machine, state: { n: 0 } })));
  const results = await Promise.all(ids.map((r) => node.client.waitFor(r.id, { timeout: '30s' })));
  return results.map((r) => (r.status === 'done' ? r.result : r));
}

describe('inline run-ahead', () => {
  it('commits each state before its next step starts, and picks each instance once', async () => {
    const node = await join({ machines: aheadMachines, queues });
    const n = 6;
    const ids = await node.client.insertAll(
      Array.from({ length: n }, () => ({ machine: chain, state: { n: 0, seen: [] } })),
    );
    for (const { id } of ids) {
      const r = await node.client.waitFor(id, { timeout: '30s' });
      expect(r.status).toBe('done');
      const { seen } = (r as { result: { seen: Array<Record<string, unknown>> } }).result;
      expect(seen.map((s) => s.step)).toEqual(['s1', 's2', 's3', 's4', 's5']);
      for (const s of seen) {
        // Read from another connection while the step ran: committed, still claimed.
        expect(s).toMatchObject({ rowStep: s.step, rowStatus: 'executing', attempt: 0 });
        expect(s.rowState).toEqual(s.given);
      }
    }
    expect(counts.claimed).toBe(n);
    expect(counts.continued).toBe(4 * n);
  });

  it('picks every step without it, and honours inline per next both ways', async () => {
    const node = await join({ machines: aheadMachines, queues });
    const n = 5;
    expect(await runAll(node, plain, n)).toEqual(Array(n).fill({ n: 5 }));
    expect(counts).toEqual({ claimed: 5 * n, continued: 0 });

    counts.claimed = counts.continued = 0;
    expect(await runAll(node, optedOut, n)).toEqual(Array(n).fill({ n: 5 }));
    expect(counts).toEqual({ claimed: 2 * n, continued: 3 * n });

    counts.claimed = counts.continued = 0;
    expect(await runAll(node, optedIn, n)).toEqual(Array(n).fill({ n: 5 }));
    expect(counts).toEqual({ claimed: 4 * n, continued: n });
  });

  it('sends a next back to the queue when the pick must admit it: rate limit, new key, delay', async () => {
    const node = await join({ machines: aheadMachines, queues, rateLimits });
    const n = 4;
    const ids = await node.client.insertAll(
      Array.from({ length: n }, () => ({ machine: guarded, state: { trail: [] } })),
    );
    for (const { id } of ids) {
      expect(await node.client.waitFor(id, { timeout: '30s' })).toMatchObject({
        status: 'done',
        result: { trail: ['start', 'limited', 'keyed', 'delayed', 'last'] },
      });
    }
    // Picked at start, for the limit, for the key and after the delay; `last` ran ahead
    // on the key's slot the row still held.
    expect(counts).toEqual({ claimed: 4 * n, continued: n });
  });

  it('hands a continuation the signals its own commit stored', async () => {
    const node = await join({ machines: aheadMachines, queues });
    const { id } = await node.client.insert(selfSignal, { state: {} });
    expect(await node.client.waitFor(id, { timeout: '30s' })).toMatchObject({
      status: 'done',
      result: { inbox: [{ name: 'note', payload: { from: 'first' } }] },
    });
    expect(counts).toEqual({ claimed: 1, continued: 1 });
  });

  it('runs nothing ahead of an outcome whose claim was lost (cancelled meanwhile)', async () => {
    const node = await join({ machines: aheadMachines, queues });
    const gates = new BroadcastChannel(AHEAD_GATE);
    const reached = new Set<string>();
    gates.onmessage = (e) => {
      const m = (e as MessageEvent).data as { id: string; step: string; go?: boolean };
      if (!m.go) reached.add(`${m.id}/${m.step}`);
    };
    try {
      const { id } = await node.client.insert(gated, { state: { trail: [] } });
      // `two` ran ahead of `one` and waits at its gate: cancel the row under it.
      await eventually(() => Promise.resolve(reached.has(`${id}/two`) || undefined), 'step two at its gate');
      await node.client.cancel(id);
      gates.postMessage({ id, step: 'two', go: true });
      await eventually(() => Promise.resolve(node.inFlight('ahead') === 0 || undefined), 'the claim to end');
      const row = await node.client.get(id);
      expect(row).toMatchObject({ status: 'cancelled', step: 'two', state: { trail: ['one'] } });
      expect(counts.continued).toBe(1);
      expect(reached.has(`${id}/three`)).toBe(false);
    } finally {
      gates.close();
    }
  });
});
