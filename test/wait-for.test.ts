/**
 * waitFor is woken by the settlement notification, not by its re-check: every timeout here
 * is well below the 30 s safety re-check, so a missing or dropped notification answers
 * `busy` and fails the test. Also: a failed first LISTEN connect is retried, and the
 * deadline holds while the LISTEN connection cannot be opened.
 */
import { createServer, connect as connectTcp, type Server, type Socket } from 'node:net';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { Client } from '../index.js';
import { NotificationListener, NotificationSender } from '../runtime/notifications.js';
import { all, noop } from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('waitfor');
const { join, client: openClient } = useNodes(db);
const LISTENER = `gen_durable listener ${db.schema}`.slice(0, 63);

/** Resolves once waitFor has marked the row watched (so whoever settles it notifies). */
async function watched(id: string): Promise<void> {
  await eventually(async () => {
    const { rows } = await db.pool.query<{ watched: boolean }>(
      `SELECT watched FROM "${db.schema}".gen_durable WHERE id = $1`,
      [id],
    );
    return rows[0]?.watched ? true : undefined;
  }, `instance ${id} to be watched`);
}

/** A client on its own pool whose LISTEN connection is `listener` (closed by the returned stop). */
function clientWith(listener: NotificationListener): {
  client: Client;
  pool: pg.Pool;
  stop: () => Promise<void>;
} {
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  const client = new Client({
    pool,
    ownsPool: false,
    schema: db.schema,
    sender: new NotificationSender(pool, db.schema, () => undefined),
    listener: () => listener,
  });
  return {
    client,
    pool,
    stop: async () => {
      await client.close();
      await listener.close();
      await pool.end();
    },
  };
}

async function serve(server: Server, port = 0): Promise<number> {
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

async function shut(server: Server, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => server.close(resolve));
}

describe('waitFor is woken by the settled notification', () => {
  it('answers done when a node finishes the instance', async () => {
    const client = openClient();
    const { id } = await client.insert(noop, { args: { i: 5 } });
    const waiting = client.waitFor(id, { timeout: '15s' });
    await watched(id);
    // Only now a node: its start-up pick runs the row, its flush notifies.
    await join({ machines: all, queues: { main: { concurrency: 1, threads: 1 } } });
    expect(await waiting).toMatchObject({ status: 'done', result: { echoed: 5 } });
  });

  it('answers cancelled when another client cancels the instance', async () => {
    const client = openClient();
    const { id } = await client.insert(noop, { args: { i: 1 }, delay: '1h' });
    const waiting = client.waitFor(id, { timeout: '10s' });
    await watched(id);
    expect(await openClient().cancel(id)).toBe(true);
    expect(await waiting).toMatchObject({ status: 'cancelled' });
  });

  it('keeps a notification that arrives while its re-check SELECT runs', async () => {
    const listener = new NotificationListener({ connectionString: db.url }, db.schema);
    const { client, pool, stop } = clientWith(listener);
    const other = openClient();
    try {
      const { id } = await client.insert(noop, { args: { i: 2 }, delay: '1h' });
      let seen: () => void = () => undefined;
      const notified = new Promise<void>((resolve) => (seen = resolve));
      // Added first, so it runs just before waitFor's own handler for the same notification.
      listener.add({ onSettled: (ids) => ids.includes(id) && seen() });
      const query = pool.query.bind(pool) as (config: unknown) => Promise<pg.QueryResult>;
      let reads = 0;
      pool.query = (async (config: { text: string }) => {
        const result = await query(config);
        // The second read by id is waitFor's re-check after marking the row watched: it
        // answers the row as it was, and the settlement is notified before it returns.
        if (/WHERE id = \$1$/.test(config.text) && ++reads === 2) {
          expect(await other.cancel(id)).toBe(true);
          await notified;
        }
        return result;
      }) as unknown as typeof pool.query;
      const result = await client.waitFor(id, { timeout: '10s' });
      expect(reads).toBeGreaterThanOrEqual(2);
      expect(result).toMatchObject({ status: 'cancelled' });
    } finally {
      await stop();
    }
  });
});

describe('waitFor and its LISTEN connection', () => {
  it('answers busy by the deadline while the LISTEN connection hangs connecting', async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((s) => sockets.add(s)); // accepts, never answers
    const port = await serve(silent);
    const { client, stop } = clientWith(
      // Its own connect timeout is far beyond the test's: only the waitFor deadline answers.
      new NotificationListener(
        { host: '127.0.0.1', port, user: 'x', database: 'x', connectionTimeoutMillis: 600_000 },
        db.schema,
      ),
    );
    try {
      const { id } = await client.insert(noop, { args: { i: 3 }, delay: '1h' });
      const result = await client.waitFor(id, { timeout: 300 });
      expect(result.status).toBe('busy');
      expect(result.snapshot).toMatchObject({ id, status: 'runnable' });
      expect(sockets.size).toBeGreaterThan(0); // it did try to connect there
    } finally {
      await stop();
      await shut(silent, sockets);
    }
  });

  it('tries the LISTEN connection again after its first connect failed', async () => {
    // A port with nothing on it: the first connect is refused.
    const probe = createServer();
    const port = await serve(probe);
    await new Promise((resolve) => probe.close(resolve));
    const through = new URL(db.url);
    through.hostname = '127.0.0.1';
    through.port = String(port);
    const { client, stop } = clientWith(
      new NotificationListener({ connectionString: through.toString() }, db.schema),
    );
    const sockets = new Set<Socket>();
    const upstream = new URL(db.url);
    const proxy = createServer((s) => {
      sockets.add(s);
      const up = connectTcp(Number(upstream.port || 5432), upstream.hostname);
      sockets.add(up);
      s.pipe(up).pipe(s);
      s.on('error', () => up.destroy());
      up.on('error', () => s.destroy());
    });
    try {
      const { id } = await client.insert(noop, { args: { i: 4 }, delay: '1h' });
      expect((await client.waitFor(id, { timeout: 300 })).status).toBe('busy');
      // Postgres is reachable there now: the next waitFor opens the LISTEN connection.
      await serve(proxy, port);
      const waiting = client.waitFor(id, { timeout: '10s' });
      await eventually(async () => {
        const { rows } = await db.pool.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = $1`, [
          LISTENER,
        ]);
        return rows.length > 0 ? true : undefined;
      }, 'the LISTEN connection');
      await watched(id);
      expect(await openClient().cancel(id)).toBe(true);
      expect(await waiting).toMatchObject({ status: 'cancelled' });
    } finally {
      await stop();
      await shut(proxy, sockets);
    }
  });
});
