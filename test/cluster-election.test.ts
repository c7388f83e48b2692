/**
 * What drives an election round when the fallback interval is out of the picture
 * (`campaignInterval: '1h'`): the heartbeat, which reports who holds the leader lock, and a
 * stopping leader's vacancy notice. In-process nodes; Postgres (`pg_locks`) is the judge.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { leaderLockHolders, leaderLockKey, releaseLeaderLock, tryLeaderLock } from '../runtime/sql/leader.js';
import { all } from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('election');
const { join } = useNodes(db);
let key: bigint;

beforeAll(async () => {
  const { rows } = await db.pool.query<{ database: string }>(`SELECT current_database() AS database`);
  key = leaderLockKey(rows[0]!.database, db.schema);
});

const elected: string[] = [];
const onElected = (m: unknown): void => {
  elected.push((m as { node: string }).node);
};
subscribe('gen_durable:leader:elected', onElected);
afterEach(() => {
  elected.length = 0;
});

/** Waits until the lock sessions of these nodes have each finished a try of the lock. */
async function triedTheLock(...nodeIds: string[]): Promise<void> {
  await eventually(
    async () => {
      const { rows } = await db.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity
       WHERE application_name = ANY ($1) AND state = 'idle' AND query LIKE '%pg_try_advisory_lock%'`,
        [nodeIds.map((id) => `gen_durable elector ${id}`)],
      );
      return rows[0]!.n === nodeIds.length ? true : undefined;
    },
    `${nodeIds.join(', ')} to have tried the lock`,
  );
}

describe('election rounds without the fallback interval', () => {
  it('a follower campaigns when its heartbeat finds the lock free', async () => {
    // Someone else (this test) holds the lock while the nodes join: both stay followers.
    const holder = await db.pool.connect();
    try {
      expect(await tryLeaderLock(holder, key)).toBe(true);
      const options = { machines: all, campaignInterval: '1h', lease: '2s', heartbeat: '200ms' } as const;
      const nodes = [await join({ ...options, nodeId: 'hb-a' }), await join({ ...options, nodeId: 'hb-b' })];
      // Each tries once as it joins, and loses.
      await triedTheLock('hb-a', 'hb-b');
      expect(nodes.map((n) => n.isLeader)).toEqual([false, false]);
      expect(await releaseLeaderLock(holder, key)).toBe(true);
      await eventually(
        async () => ((await leaderLockHolders(db.pool, key)).length === 1 ? true : undefined),
        'a node to take the free lock',
      );
      expect(nodes.filter((n) => n.isLeader)).toHaveLength(1);
      expect(elected).toHaveLength(1);
    } finally {
      holder.release();
    }
  });

  it('a stopping leader announces the vacancy and a follower takes over at once', async () => {
    // No heartbeat to speak of either: only the notice can make the follower campaign.
    const options = { machines: all, campaignInterval: '1h', lease: '2h', heartbeat: '1h' } as const;
    const first = await join({ ...options, nodeId: 'notice-a' });
    await eventually(() => Promise.resolve(first.isLeader ? true : undefined), 'the first node to lead');
    const second = await join({ ...options, nodeId: 'notice-b' });
    await triedTheLock('notice-b');
    expect(second.isLeader).toBe(false);
    const handedOver = new Promise<string>((resolve) => {
      const on = (m: unknown): void => {
        unsubscribe('gen_durable:leader:elected', on);
        resolve((m as { node: string }).node);
      };
      subscribe('gen_durable:leader:elected', on);
    });
    await first.stop();
    expect(await handedOver).toBe('notice-b');
    expect(second.isLeader).toBe(true);
    expect(await leaderLockHolders(db.pool, key)).toHaveLength(1);
  });
});
