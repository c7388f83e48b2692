/**
 * How an insert wakes the nodes that serve its queues: outside a transaction through the
 * client's sender (one statement of its own, coalescing a burst), never in the insert's own
 * statement (a notification holds Postgres's notification lock to the end of its commit);
 * in the caller's transaction, in that transaction, split into payloads Postgres takes.
 * Each statement the client's pool runs is recorded, and a LISTEN connection collects what
 * was delivered, up to a sentinel sent after the sender has flushed (so a stray or late
 * wake would be seen).
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '../index.js';
import { NotificationListener, NotificationSender, channelFor } from '../runtime/notifications.js';
import { noop } from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';

const db = useTestSchema('wake');
const channel = channelFor(db.schema);
const SENTINEL = '{"sentinel":1}';

/** A pool that records the text of every statement run through `query`. */
class RecordingPool extends pg.Pool {
  readonly texts: string[] = [];
}

const pool = new RecordingPool({ connectionString: db.url, max: 4 });
const plainQuery = pool.query.bind(pool) as (config: { text: string }) => Promise<unknown>;
(pool as unknown as { query: (config: { text: string }) => Promise<unknown> }).query = (config) => {
  pool.texts.push(config.text);
  return plainQuery(config);
};

/** Runs `fn` with a client on the recording pool (and its own sender), closed after it. */
async function withClient(fn: (client: Client, sender: NotificationSender) => Promise<void>): Promise<void> {
  const sender = new NotificationSender(pool, db.schema, (error) => {
    throw error;
  });
  const client = new Client({
    pool,
    ownsPool: false,
    schema: db.schema,
    sender,
    listener: () => new NotificationListener({ connectionString: db.url }, db.schema),
  });
  try {
    pool.texts.length = 0;
    await fn(client, sender);
  } finally {
    await client.close();
  }
}

const listen = new pg.Client({ connectionString: db.url });
const delivered: string[] = [];

beforeAll(async () => {
  await listen.connect();
  listen.on('notification', (n) => {
    if (n.channel === channel) delivered.push(n.payload ?? '');
  });
  await listen.query(`LISTEN "${channel}"`);
});

afterAll(async () => {
  await listen.end();
  await pool.end();
});

/** The payloads delivered since the last call, up to a sentinel sent after the sender flushed. */
async function deliveredSince(sender: NotificationSender): Promise<string[]> {
  await sender.flush();
  await db.pool.query('SELECT pg_notify($1, $2)', [channel, SENTINEL]);
  await eventually(() => Promise.resolve(delivered.includes(SENTINEL) ? true : undefined), 'the sentinel');
  const upTo = delivered.indexOf(SENTINEL);
  return delivered.splice(0, upTo + 1).slice(0, upTo);
}

describe('an insert wakes its queues', () => {
  it('outside a transaction through the sender, not in the insert statement', async () => {
    await withClient(async (client, sender) => {
      await client.insert(noop, { args: { i: 1 } });
      await client.insert(noop, { args: { i: 2 }, delay: '1h' });
      const [now, later, ...rest] = await deliveredSince(sender);
      expect(rest).toEqual([]);
      expect(now).toBe('{"w":{"main":0}}');
      const delay = (JSON.parse(later!) as { w: Record<string, number> }).w.main!;
      expect(delay).toBeGreaterThan(3_500_000);
      expect(delay).toBeLessThanOrEqual(3_600_000);
      const inserts = pool.texts.filter((t) => t.includes('INSERT INTO'));
      expect(inserts).toHaveLength(2);
      expect(inserts.filter((t) => t.includes('pg_notify'))).toEqual([]);
    });
  });

  it("in the caller's transaction, delivered only when it commits", async () => {
    await withClient(async (client, sender) => {
      const tx = await pool.connect();
      try {
        await tx.query('BEGIN');
        await client.insert(noop, { args: { i: 9 }, tx });
        // Nothing is delivered before the commit: the sentinel arrives alone.
        expect(await deliveredSince(sender)).toEqual([]);
        await tx.query('COMMIT');
      } finally {
        tx.release();
      }
      expect(await deliveredSince(sender)).toEqual(['{"w":{"main":0}}']);
    });
  });

  it("in the caller's transaction, split over payloads when its queues' names are long", async () => {
    // 60 queues of 190-character names: ~13 kB of wakes, over the 8000 bytes of one payload.
    const queues = Array.from({ length: 60 }, (_, i) => `q${i}.`.padEnd(190, 'x'));
    await withClient(async (client, sender) => {
      const tx = await pool.connect();
      try {
        await tx.query('BEGIN');
        await client.insertAll(
          queues.map((queue, i) => ({ machine: noop, args: { i }, queue })),
          { tx },
        );
        await tx.query('COMMIT');
      } finally {
        tx.release();
      }
      const payloads = await deliveredSince(sender);
      expect(payloads.length).toBeGreaterThan(1);
      const woken = payloads.flatMap((p) =>
        Object.entries((JSON.parse(p) as { w: Record<string, number> }).w),
      );
      expect(woken.sort()).toEqual(queues.map((q) => [q, 0]).sort());
    });
  });
});
