/**
 * Children: `spawn` inserts them and parks the parent on a join barrier in one transaction;
 * each child that ends counts it down (siblings ending in one flush together); at zero the
 * parent runs its join step with `ctx.children`. Failure does not propagate; zero children
 * proceed at once; nesting works; `cancel` of a child counts down too.
 */
import { describe, expect, it } from 'vitest';
import { reapClaims } from '../cluster/reaper.js';
import { MachineRegistry } from '../runtime/registry.js';
import { findExpiredLeases } from '../runtime/sql/loop.js';
import { child, fanout } from './fixtures/actor-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('children');
const { join, client: openClient } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;

type Mode = 'done' | 'stop' | 'throw';
const MODES: Mode[] = ['done', 'stop', 'throw'];

async function node() {
  return join({ machines: [fanout, child], queues: { actors: { concurrency: 64, threads: 2 } } });
}

interface Joined {
  children: Array<{ machine: string; status: string; result: unknown; error: string | null }>;
}

describe('spawn', () => {
  it('a 50-way spawn of done, stop and throwing children joins once with every child reported', async () => {
    const n = await node();
    const kids = Array.from({ length: 50 }, (_, i) => ({ i, mode: MODES[i % 3]! }));
    const { id } = await n.client.insert(fanout, { state: { kids, depth: 0 } });
    const result = await n.client.waitFor(id, { timeout: '60s' });
    expect(result.status).toBe('done');
    const { children } = (result as { result: Joined }).result;
    expect(children).toHaveLength(50);
    children.forEach((c, i) => {
      const mode = MODES[i % 3]!;
      expect(c.machine).toBe('actor-child');
      expect(c.status).toBe(mode === 'done' ? 'done' : 'failed');
      if (mode === 'done') expect(c.result).toEqual({ i });
      if (mode === 'stop') expect(c.error).toBe(`child ${i} stopped`);
      if (mode === 'throw') expect(c.error).toContain(`child ${i} threw`);
    });
    // Each child is stamped with its parent; the parent's join step ran exactly once.
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${T()} WHERE parent_id = $1`,
      [id],
    );
    expect(rows[0]!.n).toBe(50);
    const parent = await n.client.get(id);
    expect(parent).toMatchObject({ status: 'done', step: 'joined', attempt: 0 });
  });

  it('zero children proceed at once', async () => {
    const n = await node();
    const { id } = await n.client.insert(fanout, { state: { kids: [], depth: 0, tag: 'none' } });
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { tag: 'none', children: [] },
    });
  });

  it('nests two deep: each fan-out joins its own children', async () => {
    const n = await node();
    const kids = [
      { i: 1, mode: 'done' as const },
      { i: 2, mode: 'stop' as const },
    ];
    const { id } = await n.client.insert(fanout, { state: { kids, depth: 1, tag: 'top' } });
    const result = await n.client.waitFor(id, { timeout: '60s' });
    expect(result.status).toBe('done');
    const { children } = (result as { result: Joined }).result;
    expect(children.map((c) => [c.machine, c.status])).toEqual([
      ['actor-fanout', 'done'],
      ['actor-fanout', 'done'],
    ]);
    const inner = children.map((c) => (c.result as Joined).children.map((g) => [g.status, g.result]));
    expect(inner).toEqual([
      [
        ['done', { i: 1 }],
        ['done', { i: 1001 }],
      ],
      [
        ['failed', null],
        ['failed', null],
      ],
    ]);
  });

  it('a cancelled child counts down its parent like any other ending', async () => {
    const n = await node();
    // One child on a queue no node runs: it waits until it is cancelled.
    const kids = [
      { i: 1, mode: 'done' as const },
      { i: 2, mode: 'done' as const, queue: 'nobody' },
    ];
    const { id } = await n.client.insert(fanout, { state: { kids, depth: 0 } });
    const waiting = await eventually(async () => {
      const { rows } = await db.pool.query<{ id: string }>(
        `SELECT id::text FROM ${T()} WHERE parent_id = $1 AND queue = 'nobody' AND status = 'runnable'`,
        [id],
      );
      return rows[0]?.id;
    }, 'the child on queue nobody');
    await eventually(async () => {
      const { rows } = await db.pool.query<{ status: string; pending: number }>(
        `SELECT status::text, pending_children AS pending FROM ${T()} WHERE id = $1`,
        [id],
      );
      return rows[0]?.pending === 1 && rows[0].status === 'awaiting_children' ? true : undefined;
    }, 'the parent waiting for the last child');
    expect(await openClient().cancel(waiting)).toBe(true);
    const result = await n.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('done');
    expect((result as { result: Joined }).result.children.map((c) => c.status)).toEqual([
      'done',
      'cancelled',
    ]);
  });

  it('a child the reaper fails (its last attempt lost with its node) counts down its parent too', async () => {
    const { rows: made } = await db.pool.query<{ parent: string; kid: string }>(
      `WITH p AS (
         INSERT INTO ${T()} (fsm, step, state, queue, status, pending_children)
         VALUES ('actor-fanout', 'joined', '{}', 'reap', 'awaiting_children', 1) RETURNING id
       ), c AS (
         INSERT INTO ${T()} (fsm, step, state, queue, status, attempt, max_attempts, parent_id, locked_by, lease_expires_at)
         SELECT 'actor-child', 'perform', '{}', 'reap', 'executing', 0, 1, p.id, 'gone', now() - interval '1 minute'
         FROM p RETURNING id, parent_id
       )
       SELECT parent_id::text AS parent, id::text AS kid FROM c`,
    );
    const { parent, kid } = made[0]!;
    await db.pool.query(`UPDATE ${T()} SET children = ARRAY[$2::bigint] WHERE id = $1`, [parent, kid]);
    const reaped = await reapClaims(
      db.pool,
      db.schema,
      new MachineRegistry([]),
      (await findExpiredLeases(db.pool, db.schema, 100)).filter((c) => c.id === kid),
      { reason: 'lease expired', expired: true },
    );
    expect(reaped.map((r) => [r.id, r.status, r.joined])).toEqual([
      [kid, 'failed', false],
      [parent, 'runnable', true],
    ]);
    const { rows } = await db.pool.query<{ status: string; pending: number }>(
      `SELECT status::text, pending_children AS pending FROM ${T()} WHERE id = $1`,
      [parent],
    );
    expect(rows[0]).toEqual({ status: 'runnable', pending: 0 });
  });
});
