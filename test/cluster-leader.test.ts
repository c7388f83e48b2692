/**
 * Leader election across real node processes (`fixtures/cluster-host.ts`), checked both by
 * what the processes say (`leader:elected` / `leader:resigned`) and by what Postgres says
 * (the sessions holding the install's advisory lock in `pg_locks`); and, in this process,
 * that only the leader runs the reaper.
 *
 * Failover bounds are `eventually` timeouts, never measured assertions; the observed times
 * are logged.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { LeaderServices } from '../cluster/leader-services.js';
import { leaderLockHolders, leaderLockKey } from '../runtime/sql/leader.js';
import { eventually, useTestSchema } from './support/db.js';
import {
  type Host,
  allStarted,
  lockHolders as holdersOf,
  oneLeader as leaderOf,
  useHosts,
} from './support/host.js';
import { useNodes } from './support/node.js';

const hostFile = fileURLToPath(new URL('./fixtures/cluster-host.ts', import.meta.url));
const db = useTestSchema('leader');
const { join } = useNodes(db);
const hosts = useHosts();
let key: bigint;

beforeAll(async () => {
  const { rows } = await db.pool.query<{ database: string }>(`SELECT current_database() AS database`);
  key = leaderLockKey(rows[0]!.database, db.schema);
});

async function startHosts(n: number): Promise<Host[]> {
  const started = Array.from({ length: n }, (_, i) => {
    const id = `host-${i}-${Math.random().toString(36).slice(2, 6)}`;
    return hosts.start(id, { fixture: hostFile, args: [db.url, db.schema, id] });
  });
  await allStarted(started, 20_000);
  return started;
}

const lockHolders = (): Promise<Array<{ pid: number; node: string }>> => holdersOf(db.pool, key);
const oneLeader = (among: readonly Host[], what: string, timeoutMs: number): Promise<Host> =>
  leaderOf(among, db.pool, key, what, timeoutMs);

/** Sessions of the given nodes' electors whose last statement was a (lost) try for the lock. */
async function campaigning(nodes: readonly string[]): Promise<string[]> {
  const { rows } = await db.pool.query<{ name: string }>(
    `SELECT application_name AS name FROM pg_stat_activity
     WHERE application_name = ANY ($1::text[]) AND query LIKE '%pg_try_advisory_lock%'`,
    [nodes.map((n) => `gen_durable elector ${n}`)],
  );
  return rows.map((r) => r.name.replace(/^gen_durable elector /, ''));
}

async function followersCampaigning(followers: readonly Host[]): Promise<void> {
  await eventually(
    async () =>
      (await campaigning(followers.map((h) => h.id))).length === followers.length ? true : undefined,
    'the followers campaigning',
    10_000,
  );
}

function electedAfter(host: Host, at: number): number | undefined {
  return host.events.find((e) => e.event === 'elected' && e.at >= at)?.at;
}

describe('leader election across node processes', () => {
  it('elects exactly one leader among three: one process says so, and one session holds the lock', async () => {
    const three = await startHosts(3);
    const leader = await oneLeader(three, 'one leader', 15_000);
    const followers = three.filter((h) => h !== leader);
    // The followers did campaign and lose (their last statement was the try), not just idle.
    await followersCampaigning(followers);
    expect(three.filter((h) => h.leading)).toEqual([leader]);
    expect(await lockHolders()).toMatchObject([{ node: leader.id }]);
    expect(followers.map((h) => h.count('elected'))).toEqual([0, 0]);
  });

  it('SIGKILL of the leader: exactly one of the others leads within 15 s (the lock went with its backend)', async () => {
    const three = await startHosts(3);
    const leader = await oneLeader(three, 'one leader', 15_000);
    const survivors = three.filter((h) => h !== leader);
    // Both have lost a campaign already: leading next proves they campaign again.
    await followersCampaigning(survivors);
    const killedAt = Date.now();
    leader.kill('SIGKILL');
    await leader.exited;
    const next = await oneLeader(survivors, 'a new leader after SIGKILL', 15_000);
    expect(leader.count('resigned')).toBe(0); // it had no chance to say anything
    console.log(`failover after SIGKILL: ${electedAfter(next, killedAt)! - killedAt} ms`);
  });

  it('SIGTERM of the leader: it drains, resigns and releases the lock; another leads within 5 s', async () => {
    const two = await startHosts(2);
    const leader = await oneLeader(two, 'one leader', 15_000);
    const stoppedAt = Date.now();
    leader.kill('SIGTERM');
    const other = two.find((h) => h !== leader)!;
    const next = await oneLeader([other], 'a new leader after SIGTERM', 5_000);
    expect(next).toBe(other);
    expect(await leader.exited).toBe(0);
    expect(leader.events.at(-1)).toMatchObject({ event: 'resigned', reason: 'stopping' });
    console.log(`hand-over after SIGTERM: ${electedAfter(next, stoppedAt)! - stoppedAt} ms`);
  });

  it("pg_terminate_backend of the leader's lock session: it resigns, and a fresh session leads again", async () => {
    const two = await startHosts(2);
    const leader = await oneLeader(two, 'one leader', 15_000);
    const [held] = await lockHolders();
    const cutAt = Date.now();
    await db.pool.query(`SELECT pg_terminate_backend($1)`, [held!.pid]);
    await eventually(
      () => Promise.resolve(leader.count('resigned') > 0 ? true : undefined),
      'the leader resigned',
      10_000,
    );
    expect(leader.events.find((e) => e.event === 'resigned')!.reason).toMatch(/terminat/i);
    const next = await oneLeader(two, 'a leader again', 15_000);
    const [now] = await lockHolders();
    expect(now!.pid).not.toBe(held!.pid);
    console.log(
      `leader again after pg_terminate_backend: ${next.id === leader.id ? 'the same node' : 'the other node'}, ` +
        `${electedAfter(next, cutAt)! - cutAt} ms`,
    );
  });
});

describe('leader services', () => {
  it('a late resignation of an old term does not stop the services of a newer one', async () => {
    const log: string[] = [];
    let running = false;
    const service = {
      start: () => void ((running = true), log.push('start')),
      stop: () => ((running = false), log.push('stop'), Promise.resolve()),
    };
    const services = new LeaderServices([service]);
    const first = services.elect();
    const resigned = services.resign(first);
    const second = services.elect();
    expect(second).not.toBe(first);
    await resigned;
    await services.resign(first); // e.g. the dead session's error, reported late
    expect(running).toBe(true);
    expect(services.running).toBe(true);
    await services.resign(second);
    expect(running).toBe(false);
    expect(log).toEqual(['start', 'stop', 'start', 'stop']);
  });

  it('only the leader reaps: a follower leaves an expired claim alone; elected, it reaps it', async () => {
    // The test's own session holds the lock: the node stays a follower.
    const holder = new pg.Client({ connectionString: db.url });
    holder.on('error', () => undefined);
    await holder.connect();
    const elected: string[] = [];
    const reaped: string[][] = [];
    const onElected = (e: unknown): void => void elected.push((e as { node: string }).node);
    const onReaped = (e: unknown): void => void reaped.push((e as { ids: string[] }).ids);
    subscribe('gen_durable:leader:elected', onElected);
    subscribe('gen_durable:reaper:reaped', onReaped);
    try {
      expect(
        (await holder.query(`SELECT pg_try_advisory_lock($1::bigint) AS ok`, [key.toString()])).rows,
      ).toEqual([{ ok: true }]);
      const { rows } = await db.pool.query<{ id: string }>(
        `INSERT INTO "${db.schema}".gen_durable (fsm, step, state, queue, status, locked_by, claim, lease_expires_at, max_attempts)
         VALUES ('nobody-runs-this', 'perform', '{}', 'reap-leader', 'executing', 'gone', 1, now() - interval '1 second', 5)
         RETURNING id::text`,
      );
      const id = rows[0]!.id;
      const node = await join({
        queues: { elsewhere: { concurrency: 1 } },
        lease: '1s',
        heartbeat: '100ms',
        reapInterval: '100ms',
        campaignInterval: '100ms',
      });
      // Several heartbeats (each as frequent as a reaper round) and a lost campaign pass...
      const beats = new Set<string>();
      await eventually(
        async () => {
          const r = await db.pool.query<{ at: string }>(
            `SELECT heartbeat_at::text AS at FROM "${db.schema}".gen_durable_nodes WHERE id = $1`,
            [node.id],
          );
          if (r.rows[0]) beats.add(r.rows[0].at);
          return beats.size >= 5 && (await campaigning([node.id])).length === 1 ? true : undefined;
        },
        'five heartbeats and a campaign of the follower',
        15_000,
      );
      // ...and the follower has not reaped the claim.
      expect(node.isLeader).toBe(false);
      const before = await db.pool.query(
        `SELECT status::text, attempt FROM "${db.schema}".gen_durable WHERE id = $1`,
        [id],
      );
      expect(before.rows).toEqual([{ status: 'executing', attempt: 0 }]);
      expect(reaped).toEqual([]);

      await holder.query(`SELECT pg_advisory_unlock($1::bigint)`, [key.toString()]);
      await eventually(
        () => Promise.resolve(elected.includes(node.id) ? true : undefined),
        'the node elected',
        10_000,
      );
      expect(node.isLeader).toBe(true);
      await eventually(
        () => Promise.resolve(reaped.flat().includes(id) ? true : undefined),
        'the claim reaped',
        10_000,
      );
      const after = await db.pool.query(
        `SELECT status::text, attempt FROM "${db.schema}".gen_durable WHERE id = $1`,
        [id],
      );
      expect(after.rows).toEqual([{ status: 'runnable', attempt: 1 }]);
      await node.stop();
      expect(node.isLeader).toBe(false);
      expect(await leaderLockHolders(db.pool, key)).toEqual([]);
    } finally {
      unsubscribe('gen_durable:leader:elected', onElected);
      unsubscribe('gen_durable:reaper:reaped', onReaped);
      await holder.end();
    }
  });
});
