/**
 * A Postgres restart under a cluster: two node processes (`fixtures/chaos-host.ts`) drain
 * 2,000 instances of a five-step machine on a Postgres of this file's own, which is
 * restarted twice mid-drain (`fast`, then `immediate`: no checkpoint, crash recovery). The
 * cluster recovers by itself: both processes live on, every instance finishes with the right
 * trail and exactly one commit per step, no row is left executing, and a leader is elected
 * again (the lock went with its session), by the hosts' word and by `pg_locks`.
 *
 * Recovery times are logged, never asserted.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedDatabase, startEmbeddedPostgres } from '../cli/embedded-postgres.js';
import { createClient } from '../index.js';
import { migrate } from '../migrations/migrate.js';
import { leaderLockKey } from '../runtime/sql/leader.js';
import {
  FIVE_STEP_MOVES,
  STEPS,
  chaosAppliedLog,
  chaosRunsTable,
  fiveSteps,
} from './fixtures/chaos-machines.js';
import { eventually, queryAnswered } from './support/db.js';
import { CHAOS_HOST, type Host, allStarted, lockHolders, oneLeader, useHosts } from './support/host.js';

const INSTANCES = 2_000;
const NODES = 2;
const schema = 'cluster_restart';
/** Restart Postgres when this fraction of the 5 × INSTANCES step executions has run. */
const RESTARTS: ReadonlyArray<readonly [number, 'fast' | 'immediate']> = [
  [0.2, 'fast'],
  [0.5, 'immediate'],
];
const OPTIONS = {
  queues: { chaos: { concurrency: 8, threads: 1 } },
  // A claim whose reply the restart cut off is not in flight on its node: its lease lapses
  // and the reaper hands the row on. Short, to keep this quick.
  lease: '3s',
  heartbeat: '500ms',
  reapInterval: '500ms',
  campaignInterval: '1h', // elections driven by heartbeats and vacancy notices only
  pollInterval: '1h', // no safety net: recovery must come from the reconnects
  poolSize: 3,
};
const hosts = useHosts();
let server: EmbeddedDatabase;
let admin: pg.Pool;
let key: bigint;

beforeAll(async () => {
  server = await startEmbeddedPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  admin.on('error', () => undefined); // the test's own pool, across restarts
  await migrate({ pool: admin, schema });
  await admin.query(chaosRunsTable(schema));
  await admin.query(chaosAppliedLog(schema));
  key = leaderLockKey('gen_durable', schema);
});

afterAll(async () => {
  await admin?.end();
  await server?.stop();
});

const query = <T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> =>
  queryAnswered<T>(admin, text, values);

const T = `"${schema}".gen_durable`;
const executions = async (): Promise<number> =>
  (await query<{ n: number }>(`SELECT count(*)::int AS n FROM "${schema}".chaos_runs`))[0]!.n;
const finished = async (): Promise<number> =>
  (await query<{ n: number }>(`SELECT count(*)::int AS n FROM ${T} WHERE status = 'done'`))[0]!.n;

function startHost(id: string): Host {
  return hosts.start(id, {
    fixture: CHAOS_HOST,
    args: [server.url, schema, id, JSON.stringify(OPTIONS)],
    env: { CHAOS_URL: server.url, CHAOS_SCHEMA: schema },
  });
}

describe('a Postgres restart under a cluster of node processes', () => {
  it('recovers by itself: every instance done, each step committed once, nothing executing, a leader again', async () => {
    const began = Date.now();
    const nodes = Array.from({ length: NODES }, (_, i) => startHost(`restart-${i}`));
    await allStarted(nodes, 30_000);
    const first = await oneLeader(nodes, admin, key, 'a first leader', 20_000);
    const client = createClient({ connectionString: server.url, schema, onError: () => undefined });
    try {
      await client.insertAll(
        Array.from({ length: INSTANCES }, () => ({ machine: fiveSteps, state: { trail: [] } })),
      );
    } finally {
      await client.close();
    }

    const log: string[] = [];
    let leader = first;
    for (const [fraction, mode] of RESTARTS) {
      await eventually(
        async () => ((await executions()) >= fraction * STEPS.length * INSTANCES ? true : undefined),
        `${Math.round(fraction * 100)}% of the steps to run`,
        60_000,
      );
      const seen = new Map(nodes.map((h) => [h, h.events.length]));
      const [inFlight] = await query<{ n: number }>(
        `SELECT count(*)::int AS n FROM ${T} WHERE status = 'executing'`,
      );
      expect(inFlight!.n).toBeGreaterThan(0); // it comes with claims in flight
      await server.halt(mode);
      await server.resume();
      const resumedAt = Date.now();
      const before = await finished();
      expect(before).toBeLessThan(INSTANCES); // the restart did come mid-drain
      // The leader's lock session went with the server: it resigned, and a leader (it or the
      // other) was elected afresh, by a new session.
      await leader.next(
        (e) => e.event === 'resigned',
        `the leader to resign after the ${mode} restart`,
        30_000,
        seen.get(leader),
      );
      leader = await oneLeader(nodes, admin, key, `a leader again after the ${mode} restart`, 30_000);
      const elected = await leader.next(
        (e) => e.event === 'elected',
        'its election',
        1_000,
        seen.get(leader),
      );
      // Work goes on: steps run again after the restart.
      const ran = await executions();
      await eventually(
        async () => ((await executions()) > ran ? true : undefined),
        `steps to run after the ${mode} restart`,
        30_000,
      );
      log.push(
        `${mode} restart with ${inFlight!.n} claims in flight, ${before} of ${INSTANCES} done: ${leader.id} leads ` +
          `${elected.at - resumedAt} ms after the server was back, steps run again ${Date.now() - resumedAt} ms after`,
      );
    }

    await eventually(
      async () => ((await finished()) === INSTANCES ? true : undefined),
      'every instance to finish',
      120_000,
    ).catch(async (error: unknown) => {
      const stuck = await query(
        `SELECT id, status::text, step, attempt, locked_by FROM ${T} WHERE status <> 'done' LIMIT 5`,
      );
      throw new Error(`${String(error)}; not done: ${JSON.stringify(stuck)}`);
    });
    const [summary] = await query<{ right: number; executing: number; doubled: number; exact: number }>(
      `WITH m AS (
         SELECT instance, string_agg(move, ',' ORDER BY seq) AS moves,
                count(*) AS n, count(DISTINCT move) AS distinct_moves
         FROM "${schema}".chaos_applied GROUP BY instance
       )
       SELECT count(*) FILTER (WHERE t.status = 'done' AND t.result = $1::jsonb)::int AS right,
              count(*) FILTER (WHERE t.status = 'executing')::int AS executing,
              count(*) FILTER (WHERE m.n > m.distinct_moves)::int AS doubled,
              count(*) FILTER (WHERE m.moves = $2)::int AS exact
       FROM ${T} t LEFT JOIN m ON m.instance = t.id`,
      [JSON.stringify({ trail: STEPS }), FIVE_STEP_MOVES],
    );
    expect(summary).toEqual({ right: INSTANCES, executing: 0, doubled: 0, exact: INSTANCES });
    // Both processes lived through it, and one of them leads, by Postgres too.
    expect(nodes.map((h) => h.alive)).toEqual(nodes.map(() => true));
    expect(nodes.filter((h) => h.leading)).toEqual([leader]);
    expect(await lockHolders(admin, key)).toMatchObject([{ node: leader.id }]);

    const total = await executions();
    const errors = nodes.flatMap((h) => h.events).filter((e) => e.event === 'error').length;
    for (const line of log) console.log(line);
    console.log(
      `postgres restarts: ${INSTANCES} instances, ${NODES} nodes, ${RESTARTS.length} restarts; ` +
        `${total} step executions: re-runs ${total - STEPS.length * INSTANCES}; ${errors} node errors reported; ` +
        `${Date.now() - began} ms in all`,
    );
  }, 240_000);
});
