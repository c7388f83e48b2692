/**
 * Node processes for cluster tests (`Host`, from `host-process.ts`): `useHosts` kills every
 * host still alive after each test (also when it failed). The helpers below read who leads
 * from the hosts' own events and from `pg_locks`.
 */
import type pg from 'pg';
import { afterEach } from 'vitest';
import { leaderLockHolders } from '../../runtime/sql/leader.js';
import { eventually } from './eventually.js';
import { Host, type HostOptions } from './host-process.js';

export { CHAOS_HOST, Host, type HostEvent, type HostOptions } from './host-process.js';

/** Hosts started through `start` are SIGKILLed after each test (a stopped one too) and awaited. */
export function useHosts(): { start: (id: string, options: HostOptions) => Host; all: Host[] } {
  const all: Host[] = [];
  afterEach(async () => {
    for (const h of all) h.kill('SIGKILL');
    await Promise.all(all.splice(0).map((h) => h.exited));
  });
  return {
    all,
    start: (id, options) => {
      const host = new Host(id, options);
      all.push(host);
      return host;
    },
  };
}

/** Waits until every host printed `started`. */
export async function allStarted(hosts: readonly Host[], timeoutMs: number): Promise<void> {
  await Promise.all(hosts.map((h) => h.next((e) => e.event === 'started', 'started', timeoutMs)));
}

/** The leader lock's holders as Postgres sees them, with the node each session belongs to (its application_name). */
export async function lockHolders(db: pg.Pool, key: bigint): Promise<Array<{ pid: number; node: string }>> {
  const pids = await leaderLockHolders(db, key);
  if (pids.length === 0) return [];
  const { rows } = await db.query<{ pid: number; name: string }>(
    `SELECT pid, application_name AS name FROM pg_stat_activity WHERE pid = ANY ($1::int[])`,
    [pids],
  );
  return rows.map((r) => ({ pid: r.pid, node: r.name.replace(/^gen_durable elector /, '') }));
}

/** Exactly one host says it leads and Postgres agrees: one lock holder, that host's session. */
export async function oneLeader(
  among: readonly Host[],
  db: pg.Pool,
  key: bigint,
  what: string,
  timeoutMs: number,
): Promise<Host> {
  return eventually(
    async () => {
      const leading = among.filter((h) => h.leading);
      if (leading.length !== 1) return undefined;
      const holders = await lockHolders(db, key);
      return holders.length === 1 && holders[0]!.node === leading[0]!.id ? leading[0] : undefined;
    },
    what,
    timeoutMs,
  );
}
