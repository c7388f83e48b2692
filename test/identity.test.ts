/** Identity (SPEC §3): correlation keys address and deduplicate instances, race-free. */
import { randomBytes, randomInt } from 'node:crypto';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import {
  type Client,
  type InsertItem,
  type InsertOptions,
  LIVE_STATUSES,
  type Status,
  ValidationError,
  createClient,
} from '../index.js';
import { all, noop } from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('identity');
const { client: openClient, join } = useNodes(db);
const table = `"${db.schema}".gen_durable`;

/** A parked noop job's options (an hour away, so no node runs it), with `key` and `scope` when given. */
function opts(i: number, key?: string, scope?: readonly Status[]): InsertOptions<typeof noop> {
  return {
    args: { i },
    delay: '1h',
    ...(key === undefined ? {} : { correlationKey: key }),
    ...(scope === undefined ? {} : { correlationScope: scope }),
  };
}

function job(i: number, key?: string, scope?: readonly Status[]): InsertItem<typeof noop> {
  return { machine: noop, ...opts(i, key, scope) };
}

function fresh(prefix: string): string {
  return `${prefix}:${randomBytes(4).toString('hex')}:`;
}

async function rowCount(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
  return rows[0]!.n;
}

type KeyedRow = { id: string; state: { i: number }; status: string };

async function rowsWithKey(key: string): Promise<KeyedRow[]> {
  const { rows } = await db.pool.query<KeyedRow>(
    `SELECT id::text AS id, state, status::text AS status FROM ${table} WHERE correlation_key = $1 ORDER BY id`,
    [key],
  );
  return rows;
}

/** `n` clients, each with a pool of its own kept small (one Postgres serves every test file). */
async function withClients(n: number, max: number, use: (clients: Client[]) => Promise<void>): Promise<void> {
  const pools = Array.from({ length: n }, () => new pg.Pool({ connectionString: db.url, max }));
  const clients = pools.map((pool) => createClient({ pool, schema: db.schema }));
  try {
    await Promise.all(pools.map((pool) => pool.query('SELECT 1'))); // connected before the race
    await use(clients);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(pools.map((pool) => pool.end()));
  }
}

/** Resolves once `n` backends matching `where` wait on a lock (seen in pg_stat_activity). */
async function lockWaits(n: number, where: string, ...values: unknown[]): Promise<void> {
  const text = `SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ${where}`;
  await eventually(
    async () => ((await db.pool.query(text, values)).rowCount === n ? true : undefined),
    `${n} backends waiting on a lock where ${where}`,
  );
}

async function expectRefused(promise: Promise<unknown>, path: string): Promise<void> {
  const error = await promise.catch((e: unknown) => e);
  expect(error, path).toBeInstanceOf(ValidationError);
  expect((error as ValidationError).path).toBe(path);
}

describe('correlation scope storage', () => {
  it('stores a scope only for rows with a key: a keyless row occupies nothing (migration 009)', async () => {
    const gd = openClient();
    const [plain, keyed, addressOnly] = await gd.insertAll([
      { machine: noop, args: { i: 1 } },
      { machine: noop, args: { i: 2 }, correlationKey: `scope:${randomBytes(4).toString('hex')}` },
      {
        machine: noop,
        args: { i: 3 },
        correlationKey: `scope:${randomBytes(4).toString('hex')}`,
        correlationScope: [],
      },
    ]);
    const { rows } = await db.pool.query<{ id: string; scope: string | null }>(
      `SELECT id::text, correlation_scope::text AS scope FROM ${table} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [[plain.id, keyed.id, addressOnly.id]],
    );
    expect(rows).toEqual([
      { id: plain.id, scope: null },
      { id: keyed.id, scope: '{runnable,executing,awaiting_signal,awaiting_children}' },
      { id: addressOnly.id, scope: '{}' },
    ]);
  });
});

describe('identity under concurrency', () => {
  it('16 connections inserting one new key at once make one row; the others answer its id', async () => {
    await withClients(16, 2, async (clients) => {
      const prefix = fresh('race16');
      for (let k = 0; k < 30; k++) {
        const key = `${prefix}${k}`;
        const results = await Promise.all(clients.map((c, n) => c.insert(noop, opts(n, key))));
        const winners = results.flatMap((r, n) => (r.inserted ? [n] : []));
        expect(winners, key).toHaveLength(1);
        const id = results[winners[0]!]!.id;
        expect(results, key).toEqual(results.map((_, n) => ({ id, inserted: n === winners[0] })));
        expect(await rowsWithKey(key)).toEqual([{ id, state: { i: winners[0] }, status: 'runnable' }]);
      }
    });
  });

  it('20 concurrent insertAll batches over shuffled new keys neither deadlock nor duplicate, in item order', async () => {
    const prefix = fresh('shuffle');
    // Each batch: its own permutation of 100 new keys, with 10 unkeyed rows at random places.
    const plans = Array.from({ length: 20 }, (_, b) => {
      const order = Array.from({ length: 100 }, (_, k) => `${prefix}${k}`);
      for (let i = order.length - 1; i > 0; i--) {
        const j = randomInt(i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      const items: Array<{ key?: string; i: number }> = order.map((key, p) => ({ key, i: b * 1000 + p }));
      for (let u = 0; u < 10; u++) items.splice(randomInt(items.length + 1), 0, { i: b * 1000 + 500 + u });
      return items;
    });
    await withClients(20, 2, async (clients) => {
      await Promise.all(clients.map((c) => c.insertAll([job(-1)]))); // statements prepared: tight start
      const batches = await Promise.all(
        clients.map((c, b) => c.insertAll(plans[b]!.map((item) => job(item.i, item.key)))),
      );
      const { rows } = await db.pool.query<{ id: string; key: string | null; state: { i: number } }>(
        `SELECT id::text AS id, correlation_key AS key, state FROM ${table}
         WHERE id = ANY ($1::bigint[]) OR starts_with(correlation_key, $2)`,
        [batches.flat().map((r) => r.id), prefix],
      );
      const byId = new Map(rows.map((row) => [row.id, row]));
      const owner = new Map(rows.flatMap((row) => (row.key === null ? [] : [[row.key, row.id] as const])));
      expect(owner.size).toBe(100);
      expect(rows.filter((row) => row.key !== null)).toHaveLength(100); // one row per key, no more
      expect(batches.flat().filter((r) => r.inserted)).toHaveLength(100 + 20 * 10);
      for (const [b, results] of batches.entries()) {
        expect(results).toHaveLength(plans[b]!.length);
        for (const [p, r] of results.entries()) {
          const item = plans[b]![p]!;
          if (item.key === undefined) {
            expect(r.inserted).toBe(true);
            expect((await clients[b]!.get(r.id))?.state).toEqual({ i: item.i });
          } else expect(r.id, item.key).toBe(owner.get(item.key));
          // An inserted result at position p is the row of item p, in every batch.
          const row = { id: r.id, key: item.key ?? null, state: { i: item.i } };
          if (r.inserted) expect(byId.get(r.id)).toEqual(row);
        }
      }
    });
  });

  it('two batches stalled mid-statement on a key of a third transaction never deadlock when it commits', async () => {
    // Keys k1 < m < k2, listed k1 m k2 by one batch and k2 m k1 by the other. Inserted in the
    // order given, each batch would take one end, wait on m, then on the other: a deadlock.
    const p = fresh('stall');
    const [k1, m, k2] = [`${p}1`, `${p}2`, `${p}3`];
    // One connection per client: the pid it answers is the one that waits.
    await withClients(2, 1, async (clients) => {
      const [a, b] = clients as [Client, Client];
      const pids: number[] = [];
      for (const c of clients)
        pids.push((await c.pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid);
      const tx = await db.pool.connect();
      try {
        await tx.query('BEGIN');
        const held = await a.insert(noop, { ...opts(0, m), tx });
        const batches = Promise.all([
          a.insertAll([job(1, k1), job(2, m), job(3, k2)]),
          b.insertAll([job(4, k2), job(5, m), job(6, k1)]),
        ]);
        batches.catch(() => undefined); // awaited below
        await lockWaits(2, 'pid = ANY ($1::int[])', pids); // both batches wait
        await tx.query('COMMIT');
        const answers = (await batches).flat();
        const { rows } = await db.pool.query<{ key: string; id: string }>(
          `SELECT correlation_key AS key, id::text AS id FROM ${table} WHERE starts_with(correlation_key, $1)`,
          [p],
        );
        const id = new Map(rows.map((row) => [row.key, row.id]));
        expect(rows).toHaveLength(3);
        expect(id.get(m)).toBe(held.id);
        expect(answers.map((r) => r.id)).toEqual([k1, m, k2, k2, m, k1].map((k) => id.get(k)));
        expect(answers.filter((r) => r.inserted)).toHaveLength(2); // k1 and k2, once each
      } finally {
        tx.release(true);
      }
    });
  });

  it('a duplicate of a key inserted in an open transaction waits: commit makes it a duplicate, rollback a row', async () => {
    const client = openClient();
    const other = openClient();
    const tx = await db.pool.connect();
    try {
      const { rows } = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      const txPid = rows[0]!.pid;
      for (const end of ['COMMIT', 'ROLLBACK'] as const) {
        const key = fresh(`tx-${end}`);
        await tx.query('BEGIN');
        const [first, again] = await client.insertAll([job(1, key), job(3, key)], { tx });
        expect(first.inserted).toBe(true);
        expect(again).toEqual({ id: first.id, inserted: false }); // the occupant: this tx's own row
        const second = other.insert(noop, opts(2, key));
        second.catch(() => undefined); // awaited below; no unhandled rejection meanwhile
        await lockWaits(1, '$1 = ANY (pg_blocking_pids(pid))', txPid); // the second insert waits
        await tx.query(end);
        const answer = await second;
        if (end === 'COMMIT') {
          expect(answer).toEqual({ id: first.id, inserted: false });
          expect(await rowsWithKey(key)).toEqual([{ id: first.id, state: { i: 1 }, status: 'runnable' }]);
        } else {
          expect(answer.inserted && answer.id !== first.id).toBe(true);
          expect(await client.get(first.id)).toBeNull();
          expect(await rowsWithKey(key)).toEqual([{ id: answer.id, state: { i: 2 }, status: 'runnable' }]);
        }
      }
    } finally {
      tx.release(true); // discarded: never back in the pool inside a transaction
    }
  });
});

describe('correlationScope', () => {
  it('the default scope frees the key when the instance ends; a terminal status in the scope keeps it', async () => {
    const client = openClient();
    const key = fresh('default');
    const first = await client.insert(noop, opts(1, key));
    expect(await client.cancel({ key })).toBe(true);
    const second = await client.insert(noop, opts(2, key));
    expect(second.inserted && second.id !== first.id).toBe(true);
    expect(await client.get({ key })).toMatchObject({ id: second.id, status: 'runnable', state: { i: 2 } });
    expect((await client.get(first.id))?.status).toBe('cancelled');

    const kept = fresh('kept');
    const reserved = await client.insert(noop, opts(3, kept, [...LIVE_STATUSES, 'cancelled']));
    expect(await client.cancel({ key: kept })).toBe(true);
    expect(await client.insert(noop, opts(4, kept))).toEqual({ id: reserved.id, inserted: false });
    expect(await client.insertAll([job(5, kept), job(6)])).toMatchObject([
      { id: reserved.id, inserted: false },
      { inserted: true },
    ]);
    expect(await client.get({ key: kept })).toMatchObject({ id: reserved.id, status: 'cancelled' });
    expect(await rowsWithKey(kept)).toHaveLength(1);

    // 'done' in the scope does not reserve the key of a cancelled instance.
    const doneOnly = fresh('done-only');
    const ended = await client.insert(noop, opts(7, doneOnly, [...LIVE_STATUSES, 'done']));
    expect(await client.cancel(ended.id)).toBe(true);
    const reused = await client.insert(noop, opts(8, doneOnly));
    expect(reused.inserted && reused.id !== ended.id).toBe(true);
  });

  it("with 'done' in the scope, a job that ran to completion keeps its key; by default its key frees", async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 2, threads: 1 } } });
    const kept = fresh('ran-kept');
    const freed = fresh('ran-freed');
    const a = await node.client.insert(noop, { ...opts(1, kept, [...LIVE_STATUSES, 'done']), delay: 0 });
    const b = await node.client.insert(noop, { ...opts(2, freed), delay: 0 });
    expect(await node.client.waitFor({ key: kept }, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { echoed: 1 },
    });
    expect(await node.client.waitFor(b.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    expect(await node.client.insert(noop, opts(3, kept))).toEqual({ id: a.id, inserted: false });
    const again = await node.client.insert(noop, opts(4, freed));
    expect(again.inserted && again.id !== b.id).toBe(true);
  });

  it('[] addresses without deduplicating; a key addresses its occupant, else its newest row', async () => {
    const client = openClient();
    const key = fresh('address-only');
    const a = await client.insert(noop, opts(1, key, []));
    const b = await client.insert(noop, opts(2, key, []));
    expect([a.inserted, b.inserted]).toEqual([true, true]);
    expect(b.id).not.toBe(a.id);
    expect((await client.get({ key }))?.id).toBe(b.id); // no occupant: the newest
    const occupant = await client.insert(noop, opts(3, key)); // [] rows occupy nothing
    const d = await client.insert(noop, opts(4, key, [])); // newer than the occupant, beside it
    expect([occupant.inserted, d.inserted]).toEqual([true, true]);
    expect((await client.get({ key }))?.id).toBe(occupant.id); // the occupant before the newest
    expect(await client.insert(noop, opts(5, key))).toEqual({ id: occupant.id, inserted: false });
    expect(await client.cancel({ key })).toBe(true); // cancels the occupant only
    expect((await client.get(occupant.id))?.status).toBe('cancelled');
    expect(await client.get({ key })).toMatchObject({ id: d.id, status: 'runnable' }); // newest again
    expect((await rowsWithKey(key)).map((r) => r.id)).toEqual([a.id, b.id, occupant.id, d.id]);
  });

  it('insertAll answers in item order with duplicates inside the batch and against an older row', async () => {
    const client = openClient();
    const p = fresh('batch');
    const old = await client.insert(noop, opts(-1, `${p}old`));
    const items = [
      job(0, `${p}new`),
      job(1),
      job(2, `${p}other`),
      job(3, `${p}old`), // occupied by the older row
      job(4, `${p}free`, []),
      job(5, `${p}free`, []), // address-only: no dedup
      job(6, `${p}old`, []), // address-only beside an occupant
      job(7, `${p}new`), // repeats item 0
      job(8, `${p}a-first`), // sorts before the others, comes later
      job(9, `${p}other`), // repeats item 2
      job(10, `${p}old`),
    ];
    const r = await client.insertAll(items);
    const id = (n: number): string => r[n]!.id;
    const ins = (n: number): object => ({ id: id(n), inserted: true });
    const dup = (of: string): object => ({ id: of, inserted: false });
    expect(r).toHaveLength(items.length);
    expect(r.slice(0, 7)).toEqual([ins(0), ins(1), ins(2), dup(old.id), ins(4), ins(5), ins(6)]);
    expect(r.slice(7)).toEqual([dup(id(0)), ins(8), dup(id(2)), dup(old.id)]);
    const created = [0, 1, 2, 4, 5, 6, 8];
    const { rows } = await db.pool.query<{ id: string; key: string | null; state: { i: number } }>(
      `SELECT id::text AS id, correlation_key AS key, state FROM ${table} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [created.map(id)],
    );
    expect(rows).toHaveLength(created.length); // distinct new rows, none of them the old one
    const byId = new Map(rows.map((row) => [row.id, row]));
    for (const n of created) {
      expect(byId.get(id(n))).toEqual({ id: id(n), key: items[n]!.correlationKey ?? null, state: { i: n } });
    }
  });
});

describe('keys are verbatim', () => {
  const keys = [
    ...[`it's a "quote"`, `'); DROP TABLE gen_durable; --`, 'a;b -- c /* d */', 'back\\slash \\\\ \\n \\'],
    ...['%', '_', 'x', '100%_off', '100X_off'], // LIKE wildcards, and what they would match as patterns
    ...['🦄🏳️‍🌈 order 👨‍👩‍👧', 'طلب رقم ٤٢ — שלום', '\u202eevil\u202c'],
    ...['caf\u00e9', 'cafe\u0301'], // NFC and NFD: one text to a reader, two keys
    ...[' padded', 'padded ', 'padded', '\tpadded\n', 'Order:1', 'order:1', 'ORDER:1'],
    ...['k'.repeat(1_000), 'é'.repeat(1_000), '🦄'.repeat(500)], // at the limits: 1,000 characters, 2,000 bytes
  ];

  it('are stored, deduplicated and addressed byte for byte: get, cancel and waitFor by key', async () => {
    expect(new Set(keys).size).toBe(keys.length);
    const client = openClient();
    const first = [];
    for (const [n, key] of keys.entries()) first.push(await client.insert(noop, opts(n, key)));
    expect(first.every((r) => r.inserted)).toBe(true);
    expect(new Set(first.map((r) => r.id)).size).toBe(keys.length); // near-twins never collapse
    const again = await client.insertAll(keys.map((key, n) => job(100 + n, key)));
    expect(again).toEqual(first.map((r) => ({ id: r.id, inserted: false })));
    for (const [n, key] of keys.entries()) {
      const { id } = first[n]!;
      expect((await client.get(id))?.correlationKey).toBe(key);
      const { rows } = await db.pool.query<{ key: string; hex: string }>(
        `SELECT correlation_key AS key, encode(convert_to(correlation_key, 'UTF8'), 'hex') AS hex
         FROM ${table} WHERE id = $1`,
        [id],
      );
      expect(rows).toEqual([{ key, hex: Buffer.from(key, 'utf8').toString('hex') }]);
      expect(await client.get({ key })).toMatchObject({ id, state: { i: n } });
      expect(await client.cancel({ key })).toBe(true);
      expect(await client.waitFor({ key }, { timeout: '10s' })).toMatchObject({
        status: 'cancelled',
        snapshot: { id, correlationKey: key },
      });
    }
  });

  it('bad keys are refused naming correlationKey, writing nothing', async () => {
    const client = openClient();
    const before = await rowCount();
    const bad = [
      '',
      '\u0000',
      'a\u0000b',
      'k'.repeat(1_001),
      '🦄'.repeat(501), // 2,004 bytes
      'é'.repeat(1_001),
      'lone \ud800',
      '\udc00 lone',
    ];
    for (const key of bad) {
      await expectRefused(client.insert(noop, opts(1, key)), 'correlationKey');
    }
    await expectRefused(client.insertAll([job(1, fresh('ok')), job(2, '')]), 'items[1].correlationKey');
    await expectRefused(client.get({ key: '' }), 'target');
    expect(await rowCount()).toBe(before);
  });

  it('a key past 2,000 bytes of UTF-8 is refused as a ValidationError, never a database error', async () => {
    const client = openClient();
    const before = await rowCount();
    // 1,000 distinct CJK ideographs: 3,000 bytes of UTF-8 that barely compress; Postgres's
    // btree refused it (54000) before keys were limited by bytes.
    const key = String.fromCharCode(
      ...Array.from({ length: 1_000 }, (_, i) => 0x4e00 + ((i * 7919) % 20_000)),
    );
    await expectRefused(client.insert(noop, opts(1, key)), 'correlationKey');
    await expectRefused(client.insert(noop, { ...opts(1, key), correlationScope: [] }), 'correlationKey');
    expect(await rowCount()).toBe(before);
  });
});
