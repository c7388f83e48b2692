/**
 * `gc: { retention: 0 }`: a row that ends `done` is deleted by the flush that commits its
 * outcome, where nothing reads it after; the rest is left to GC as before. Each test waits
 * for the node's first GC sweep (it runs as the node leads) before inserting, and the next
 * sweep is an hour away: a row that is gone was deleted by its flush.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { GenDurableNode } from '../index.js';
import { channelFor } from '../runtime/notifications.js';
import { all, flaky, noop } from './fixtures/machines.js';
import { all as actors, fanout } from './fixtures/actor-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('ret0');
const { join, client: openClient } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;

let sweeps: Array<{ node: string; deleted: number }> = [];
let applied = 0;
const onSwept = (m: unknown): void => void sweeps.push(m as { node: string; deleted: number });
const onFlush = (m: unknown): void => void (applied += (m as { applied: number }).applied);

beforeEach(() => {
  sweeps = [];
  applied = 0;
  subscribe('gen_durable:gc:swept', onSwept);
  subscribe('gen_durable:flush', onFlush);
});

afterEach(async () => {
  unsubscribe('gen_durable:gc:swept', onSwept);
  unsubscribe('gen_durable:flush', onFlush);
  await db.pool.query(`TRUNCATE ${T()}`);
});

/** A node keeping nothing, once its first GC sweep (of an empty table) is over. */
async function nodeKeepingNothing(): Promise<GenDurableNode> {
  const node = await join({
    machines: all,
    queues: { main: { concurrency: 4, threads: 1 } },
    gc: { retention: 0, interval: '1h' },
  });
  await eventually(
    () => Promise.resolve(sweeps.some((s) => s.node === node.id) || undefined),
    'the first sweep',
  );
  return node;
}

async function statuses(): Promise<Record<string, number>> {
  const { rows } = await db.pool.query<{ status: string; n: number }>(
    `SELECT status::text, count(*)::int AS n FROM ${T()} GROUP BY status`,
  );
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

describe('gc: { retention: 0 }', () => {
  it('deletes a row as it ends done, in the flush that commits it', async () => {
    const node = await nodeKeepingNothing();
    const client = openClient();
    await client.insertAll(Array.from({ length: 20 }, (_, i) => ({ machine: noop, args: { i } })));
    await eventually(() => Promise.resolve(applied >= 20 || undefined), '20 outcomes committed');
    expect(await statuses()).toEqual({});
    expect(sweeps.filter((s) => s.node === node.id)).toHaveLength(1);
  });

  it('keeps a row someone waits for (GC takes it later), and waitFor answers its result', async () => {
    await nodeKeepingNothing();
    const client = openClient();
    const { id } = await client.insert(noop, { args: { i: 7 }, delay: '1h' });
    const waiting = client.waitFor(id, { timeout: '15s' });
    await eventually(async () => {
      const { rows } = await db.pool.query<{ watched: boolean }>(`SELECT watched FROM ${T()} WHERE id = $1`, [
        id,
      ]);
      return rows[0]?.watched || undefined;
    }, 'the row to be watched');
    await db.pool.query(`UPDATE ${T()} SET eligible_at = now() WHERE id = $1`, [id]);
    // Now due: wake the node as an insert would.
    await db.pool.query(`SELECT pg_notify($1, '{"w":{"main":0}}')`, [channelFor(db.schema)]);
    expect(await waiting).toMatchObject({ status: 'done', result: { echoed: 7 } });
    expect(await statuses()).toEqual({ done: 1 });
  });

  it('keeps a row that ends failed (GC takes it later)', async () => {
    await nodeKeepingNothing();
    const client = openClient();
    await client.insert(flaky, { args: {} });
    await client.insert(noop, { args: { i: 1 } });
    await eventually(async () => {
      const s = await statuses();
      return s.failed === 1 && s.runnable === undefined && s.executing === undefined ? s : undefined;
    }, 'the flaky job to fail and the other to end');
    expect(await statuses()).toEqual({ failed: 1 });
  });
});

describe('gc: { retention: 0 } with children', () => {
  it('keeps the children a parent joins: the parent reads each one done with its result', async () => {
    const node = await join({
      machines: [...all, ...actors],
      queues: { actors: { concurrency: 4, threads: 1 } },
      gc: { retention: 0, interval: '1h' },
    });
    await eventually(
      () => Promise.resolve(sweeps.some((s) => s.node === node.id) || undefined),
      'the first sweep',
    );
    const client = openClient();
    const kids = [1, 2, 3].map((i) => ({ i, mode: 'done' as const }));
    const { id } = await client.insert(fanout, { state: { kids, depth: 0 } });
    const settled = await client.waitFor(id, { timeout: '15s' });
    expect(settled).toMatchObject({
      status: 'done',
      result: {
        children: kids.map((k) => ({
          machine: 'actor-child',
          status: 'done',
          result: { i: k.i },
          error: null,
        })),
      },
    });
  });
});

describe('by default', () => {
  it('a row that ends done is kept', async () => {
    await join({ machines: all, queues: { main: { concurrency: 4, threads: 1 } } });
    const client = openClient();
    await client.insertAll(Array.from({ length: 5 }, (_, i) => ({ machine: noop, args: { i } })));
    await eventually(() => Promise.resolve(applied >= 5 || undefined), '5 outcomes committed');
    expect(await statuses()).toEqual({ done: 5 });
  });
});
