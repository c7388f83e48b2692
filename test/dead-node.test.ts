/**
 * Dead-node reclaim (`Reaper`, `findDeadNodeClaims`): the claims of a node whose heartbeat
 * stopped, or whose node row is gone, are reaped at once — long before their leases expire —
 * through the reaper's claim-guarded path, and the dead node's row is pruned; live nodes'
 * claims are untouched. Dead and live nodes are node rows written by hand with old or fresh
 * heartbeats; the reaper's clock is a seam, so nothing waits for time to pass.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { afterEach, describe, expect, it } from 'vitest';
import { Reaper, type ReapedRow, deadNodeAfter } from '../cluster/reaper.js';
import { MachineRegistry } from '../runtime/registry.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { registerNode } from '../runtime/sql/nodes.js';
import { useTestSchema } from './support/db.js';

const db = useTestSchema('dead');
const T = (): string => `"${db.schema}".gen_durable`;
const N = (): string => `"${db.schema}".gen_durable_nodes`;
const DEAD_MS = 10_000;
const HOUR = 3_600_000;

afterEach(async () => {
  await db.pool.query(`TRUNCATE ${T()}, ${N()}`);
});

/** A node row whose last heartbeat was `ageMs` ago. */
async function node(id: string, ageMs: number): Promise<void> {
  await registerNode(db.pool, db.schema, { id, host: 'h', pid: 1, queues: ['q'] });
  await db.pool.query(
    `UPDATE ${N()} SET heartbeat_at = now() - $2 * interval '1 millisecond' WHERE id = $1`,
    [id, ageMs],
  );
}

/** `n` rows claimed by `nodeId` under a lease of an hour, claimed `ageMs` ago; returns their ids. */
async function claimed(nodeId: string, n: number, ageMs = 0, maxAttempts = 5): Promise<string[]> {
  const queue = `q-${nodeId}`;
  await db.pool.query(
    `INSERT INTO ${T()} (fsm, step, state, queue, max_attempts)
     SELECT 'dead', 'perform', '{}', $1, $3 FROM generate_series(1, $2)`,
    [queue, n, maxAttempts],
  );
  const rows = await claimBatch(db.pool, db.schema, { queue, limit: n, nodeId, leaseMs: HOUR });
  await db.pool.query(
    `UPDATE ${T()} SET updated_at = now() - $2 * interval '1 millisecond' WHERE queue = $1`,
    [queue, ageMs],
  );
  return rows.map((r) => r.id).sort((a, b) => Number(a) - Number(b));
}

async function rowsOf(ids: readonly string[]) {
  const { rows } = await db.pool.query<{
    id: string;
    status: string;
    attempt: number;
    locked_by: string | null;
    lease_in_future: boolean | null;
    last_error: string | null;
  }>(
    `SELECT id::text, status::text, attempt, locked_by, lease_expires_at > now() AS lease_in_future, last_error
     FROM ${T()} g WHERE g.id = ANY ($1::bigint[]) ORDER BY g.id`,
    [ids],
  );
  return rows;
}

async function nodeIds(): Promise<string[]> {
  const { rows } = await db.pool.query<{ id: string }>(`SELECT id FROM ${N()} ORDER BY id`);
  return rows.map((r) => r.id);
}

/** A reaper whose clock says it has watched the cluster for `watchedMs` when it runs. */
function reaper(
  watchedMs: number,
  reaped: ReapedRow[] = [],
): { reaper: Reaper; advance: (ms: number) => void } {
  let now = 0;
  const r = new Reaper({
    db: db.pool,
    schema: db.schema,
    registry: new MachineRegistry([]),
    intervalMs: 60_000,
    batch: 2,
    deadNodeMs: DEAD_MS,
    onReaped: (rows) => reaped.push(...rows),
    onError: (e) => {
      throw e;
    },
    clock: () => now,
  });
  now += watchedMs;
  return { reaper: r, advance: (ms) => (now += ms) };
}

describe('dead-node reclaim', () => {
  it("reaps a dead node's claims at once, an hour before their leases expire, prunes its row, and leaves live nodes' claims alone", async () => {
    await node('ghost', 5 * 60_000); // last beat 5 minutes ago
    await node('alive', 0);
    const dead = await claimed('ghost', 5, 5 * 60_000);
    const live = await claimed('alive', 3, 5 * 60_000); // old claims of a live node: still its own
    const vanished = await claimed('vanished', 2, 60_000); // no node row, claimed a minute ago
    const young = await claimed('newcomer', 2, 0); // no node row yet, claimed just now
    expect((await rowsOf(dead)).every((r) => r.lease_in_future)).toBe(true);
    const events: Array<{ count: number; ids: string[]; cause: string }> = [];
    const onReaped = (m: unknown): void =>
      void events.push(m as { count: number; ids: string[]; cause: string });
    subscribe('gen_durable:reaper:reaped', onReaped);
    const reaped: ReapedRow[] = [];
    try {
      // Batches of 2: the seven dead claims take four rounds of the loop.
      expect(await reaper(DEAD_MS, reaped).reaper.runOnce()).toBe(7);
    } finally {
      unsubscribe('gen_durable:reaper:reaped', onReaped);
    }
    const reclaimed = [...dead, ...vanished];
    expect(await rowsOf(reclaimed)).toEqual(
      reclaimed.map((id) => ({
        id,
        status: 'runnable',
        attempt: 1,
        locked_by: null,
        lease_in_future: null,
        last_error: expect.stringContaining('node dead') as string,
      })),
    );
    expect(reaped.map((r) => r.id).sort((a, b) => Number(a) - Number(b))).toEqual(reclaimed);
    // Eligible after the default backoff, not at once.
    expect(reaped.every((r) => r.status === 'runnable' && r.eligibleIn > 0)).toBe(true);
    expect(events.every((e) => e.cause === 'dead_node')).toBe(true);
    expect(events.flatMap((e) => e.ids).sort((a, b) => Number(a) - Number(b))).toEqual(reclaimed);
    for (const [ids, by] of [
      [live, 'alive'],
      [young, 'newcomer'],
    ] as const)
      expect(await rowsOf(ids)).toEqual(
        ids.map((id) => ({
          id,
          status: 'executing',
          attempt: 0,
          locked_by: by,
          lease_in_future: true,
          last_error: null,
        })),
      );
    expect(await nodeIds()).toEqual(['alive']);
  });

  it('fails a dead claim whose attempts are spent', async () => {
    await node('ghost', 5 * 60_000);
    const [last] = await claimed('ghost', 1, 5 * 60_000, 1);
    expect(await reaper(DEAD_MS).reaper.runOnce()).toBe(1);
    expect(await rowsOf([last!])).toMatchObject([{ status: 'failed', attempt: 1, locked_by: null }]);
  });

  it('waits until the reaper has watched for the dead-node threshold (after an outage every heartbeat is old)', async () => {
    await node('ghost', 5 * 60_000);
    const dead = await claimed('ghost', 2, 5 * 60_000);
    const { reaper: r, advance } = reaper(DEAD_MS - 1);
    expect(await r.runOnce()).toBe(0);
    expect((await rowsOf(dead)).map((x) => x.status)).toEqual(['executing', 'executing']);
    expect(await nodeIds()).toEqual(['ghost']);
    advance(1);
    expect(await r.runOnce()).toBe(2);
    expect(await nodeIds()).toEqual([]);
  });

  it('is safe on two leaders at once: each dead claim is reaped once', async () => {
    await node('ghost', 5 * 60_000);
    const dead = await claimed('ghost', 40, 5 * 60_000);
    const counts = await Promise.all([reaper(DEAD_MS).reaper.runOnce(), reaper(DEAD_MS).reaper.runOnce()]);
    // A round that finds only rows the other holds ends early (as the reaper does): the next picks them up.
    const rest = await reaper(DEAD_MS).reaper.runOnce();
    expect(counts[0] + counts[1] + rest).toBe(40);
    expect(new Set((await rowsOf(dead)).map((r) => `${r.status}/${r.attempt}`))).toEqual(
      new Set(['runnable/1']),
    );
  });

  it('declares a node dead after three missed heartbeats, never sooner than 10 s', () => {
    expect(deadNodeAfter(5_000)).toBe(15_000);
    expect(deadNodeAfter(1_000)).toBe(10_000);
    expect(deadNodeAfter(60_000)).toBe(180_000);
  });
});
