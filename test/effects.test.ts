/**
 * Atomic effects: `ctx.enqueue` and `ctx.signal` commit in the transaction of the step's
 * outcome — never before it (nothing is visible while the step runs), never without it (a
 * stale outcome, here one whose instance was cancelled under it, writes none of them).
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import { child, effector, waiter } from './fixtures/actor-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useGates } from './support/gates.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('effects');
const { join } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;
const S = (): string => `"${db.schema}".gen_durable_signals`;

const gates = useGates();

async function count(sql: string, values: unknown[]): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(sql, values);
  return rows[0]!.n;
}

async function node() {
  return join({ machines: [effector, waiter, child], queues: { actors: { concurrency: 8, threads: 1 } } });
}

describe('ctx.enqueue and ctx.signal', () => {
  it('commit with the outcome: invisible while the step runs, there once it has committed', async () => {
    const n = await node();
    const target = await n.client.insert(waiter, { state: { names: ['hello'], runs: 0 } });
    const { id } = await n.client.insert(effector, { state: { target: target.id, i: 1 } });
    await gates.reached(id, 'effects');
    expect(await count(`SELECT count(*)::int AS n FROM ${T()} WHERE correlation_key = 'effect:1'`, [])).toBe(
      0,
    );
    expect(await count(`SELECT count(*)::int AS n FROM ${S()} WHERE instance_id = $1`, [target.id])).toBe(0);
    gates.open(id, 'effects');
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({ status: 'done', result: 'ended' });
    // The enqueued job ran; the signal woke its target, payload verbatim.
    expect(await n.client.waitFor({ key: 'effect:1' }, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { i: 1 },
    });
    expect(await n.client.waitFor(target.id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { awaited: [{ name: 'hello', payload: { from: id, quote: `it's -- "fine"; ünï ✓` } }] },
    });
  });

  it('a stale outcome carries its effects away with it', async () => {
    const stale: string[] = [];
    const onStale = (e: unknown): void => void stale.push(...(e as { ids: string[] }).ids);
    subscribe('gen_durable:outcome:stale', onStale);
    try {
      const n = await node();
      const target = await n.client.insert(waiter, { state: { names: ['hello'], runs: 0 } });
      const { id } = await n.client.insert(effector, { state: { target: target.id, i: 2 } });
      await gates.reached(id, 'effects');
      // The claim is lost under the running step: its outcome will not apply.
      expect(await n.client.cancel(id)).toBe(true);
      gates.open(id, 'effects');
      await eventually(
        () => Promise.resolve(stale.includes(id) ? true : undefined),
        'the outcome reported stale',
      );
      expect(await n.client.get(id)).toMatchObject({ status: 'cancelled', step: 'start' });
      expect(
        await count(`SELECT count(*)::int AS n FROM ${T()} WHERE correlation_key = 'effect:2'`, []),
      ).toBe(0);
      expect(await count(`SELECT count(*)::int AS n FROM ${S()} WHERE instance_id = $1`, [target.id])).toBe(
        0,
      );
      expect(await n.client.get(target.id)).toMatchObject({ status: 'awaiting_signal' });
    } finally {
      unsubscribe('gen_durable:outcome:stale', onStale);
    }
  });
});
