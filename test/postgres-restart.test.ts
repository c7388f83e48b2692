/**
 * A Postgres restart (fast, then immediate) in the middle of a drain, on a Postgres of this
 * file's own: a joined node and a standalone client in this one process survive it (no
 * unhandled 'error' from a pool or the LISTEN connection), report it, finish every instance
 * with the right final state, and run new work at once afterwards.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EmbeddedDatabase, startEmbeddedPostgres } from '../cli/embedded-postgres.js';
import { Cluster, GenDurableError, createClient } from '../index.js';
import { migrate } from '../migrations/migrate.js';
import { all, counter, noop } from './fixtures/machines.js';
import { eventually, queryAnswered } from './support/db.js';

const INSTANCES = 3_000;

let server: EmbeddedDatabase;
let admin: pg.Pool;

beforeAll(async () => {
  server = await startEmbeddedPostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  admin.on('error', () => undefined); // the test's own pool, across restarts
});

afterAll(async () => {
  await admin?.end();
  await server?.stop();
});

const query = <T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> =>
  queryAnswered<T>(admin, text, values);

describe.each(['fast', 'immediate'] as const)('a Postgres restart (%s) mid-drain', (mode) => {
  it('kills nothing, loses nothing and leaves no row executing; new work runs at once', async () => {
    const schema = `restart_${mode}`;
    await migrate({ connectionString: server.url, schema });
    const clientErrors: unknown[] = [];
    const published: Array<{ where: string }> = [];
    const onPublished = (message: unknown): void => {
      published.push(message as { where: string });
    };
    subscribe('gen_durable:client:error', onPublished);
    const node = await Cluster.join({
      connectionString: server.url,
      schema,
      migrate: false,
      pollInterval: '1h', // no safety-net poll: recovery must come from the reconnect
      // A claim whose reply the restart cut off is not in flight on the node: its lease is
      // not extended and lapses, and the reaper hands the row on. Short, to keep this quick.
      lease: '4s',
      reapInterval: '500ms',
      machines: all,
      queues: { main: { concurrency: 16, threads: 2 } },
    });
    const client = createClient({
      connectionString: server.url,
      schema,
      onError: (error) => clientErrors.push(error),
    });
    try {
      const ids = (
        await client.insertAll(
          Array.from({ length: INSTANCES }, () => ({ machine: counter, state: { n: 0 } })),
        )
      ).map((r) => r.id);
      // A waiter that spans the restart (its LISTEN connection is cut).
      const spanning = client.waitFor(ids.at(-1)!, { timeout: '50s' });

      const done = async (): Promise<number> =>
        (
          await query<{ n: number }>(
            `SELECT count(*)::int AS n FROM "${schema}".gen_durable WHERE status = 'done'`,
          )
        )[0]!.n;
      await eventually(async () => ((await done()) > 0 ? true : undefined), 'the drain to begin');
      // Idle pooled connections in the client's pool: the server terminates them, the pool
      // emits 'error' (without a listener on it, Node would exit here).
      await Promise.all(ids.slice(0, 8).map((id) => client.get(id)));
      await server.halt(mode);
      await server.resume();
      expect(await done()).toBeLessThan(INSTANCES); // the restart did come mid-drain

      await eventually(
        async () => ((await done()) === INSTANCES ? true : undefined),
        'every instance to finish',
        45_000,
      ).catch(async (error: unknown) => {
        // Name the rows left behind, if any (e.g. a claim whose reply the restart cut off,
        // were its lease kept alive by the node's heartbeat).
        const stuck = await query(
          `SELECT id, status::text, locked_by, step FROM "${schema}".gen_durable WHERE status <> 'done' LIMIT 5`,
        );
        throw new Error(`${String(error)}; not done: ${JSON.stringify(stuck)} (node ${node.id})`);
      });
      const [row] = await query<{ right: number; executing: number }>(
        `SELECT count(*) FILTER (WHERE result = $1::jsonb)::int AS right,
                count(*) FILTER (WHERE status = 'executing')::int AS executing
           FROM "${schema}".gen_durable`,
        [JSON.stringify({ n: 3, trail: ['start', 'tick', 'tick'] })],
      );
      expect(row).toEqual({ right: INSTANCES, executing: 0 });
      expect(await spanning).toMatchObject({ status: 'done', result: { n: 3 } });

      // The client reported the lost connections (and did not crash the process).
      expect(clientErrors.length).toBeGreaterThan(0);
      expect(published.map((p) => p.where)).toContain('pool');
      expect(published.map((p) => p.where)).toContain('listener');

      // New work runs at once: inserted now, its wake-up reaches the reconnected node.
      const fresh = await client.insert(noop, { args: { i: 42 } });
      expect(await client.waitFor(fresh.id, { timeout: '20s' })).toMatchObject({
        status: 'done',
        result: { echoed: 42 },
      });
    } finally {
      unsubscribe('gen_durable:client:error', onPublished);
      await client.close();
      await node.stop({ timeout: 5_000 });
    }
  });
});

describe('waitFor while Postgres is down', () => {
  it('fails with a typed error, then works once Postgres is back', async () => {
    const schema = 'restart_down';
    await migrate({ connectionString: server.url, schema });
    const client = createClient({ connectionString: server.url, schema, onError: () => undefined });
    const other = createClient({ connectionString: server.url, schema, onError: () => undefined });
    try {
      const { id } = await client.insert(noop, { args: { i: 1 }, delay: '1h' });
      await server.halt('fast');
      const error = await client.waitFor(id, { timeout: '2s' }).catch((e: unknown) => e);
      await server.resume();
      expect(error).toBeInstanceOf(GenDurableError);
      expect((error as GenDurableError).code).toBe('unavailable');
      await query('SELECT 1'); // up again
      const waiting = client.waitFor(id, { timeout: '10s' });
      await eventually(async () => {
        const rows = await query<{ watched: boolean }>(
          `SELECT watched FROM "${schema}".gen_durable WHERE id = $1`,
          [id],
        );
        return rows[0]?.watched ? true : undefined;
      }, 'the row to be watched');
      expect(await other.cancel(id)).toBe(true);
      expect(await waiting).toMatchObject({ status: 'cancelled' });
    } finally {
      await client.close();
      await other.close();
    }
  });
});
