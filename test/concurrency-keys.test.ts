/**
 * Concurrency keys (SPEC §6): steps sharing a key never overlap across node processes
 * (logged intervals), distinct keys do; a gate of limit L never has more than L running;
 * a second executing row in a key's slot is uncommittable, and a race between two pickers
 * costs the second its pick; the key persists across steps, `next` switches or releases it,
 * parking releases it.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createClient } from '../index.js';
import { isConcurrencyConflict, needsGuardedClaim } from '../runtime/sql/errors.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { keyRunsTable, logged, switching } from './fixtures/key-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { CHAOS_HOST, allStarted, useHosts } from './support/host.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('keys');
const hosts = useHosts();
const { join } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;

interface Run {
  key: string | null;
  started: Date;
  ended: Date;
}

/** The most intervals of `runs` open at one instant. */
function maxOverlap(runs: readonly Run[]): number {
  const edges = runs.flatMap((r) => [
    [r.started.getTime(), 1],
    [r.ended.getTime(), -1],
  ]);
  // An interval ending at the instant another starts does not overlap it.
  edges.sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let open = 0;
  let most = 0;
  for (const [, d] of edges) most = Math.max(most, (open += d!));
  return most;
}

describe('concurrency keys', () => {
  it('across three node processes: one key never overlaps itself, a gate of 3 never runs more than 3, distinct keys overlap', async () => {
    await db.pool.query(keyRunsTable(db.schema));
    const options = {
      queues: { keys: { concurrency: 8, threads: 1 } },
      concurrencyLimits: { gate: { limit: 3 } },
      heartbeat: '500ms',
      lease: '3s',
    };
    const nodes = ['keys-a', 'keys-b', 'keys-c'].map((id) =>
      hosts.start(id, {
        fixture: CHAOS_HOST,
        args: [db.url, db.schema, id, JSON.stringify(options)],
        env: { HOST_MACHINES: 'keys', KEYS_URL: db.url, KEYS_SCHEMA: db.schema },
      }),
    );
    await allStarted(nodes, 60_000);
    const client = createClient({ connectionString: db.url, schema: db.schema });
    try {
      const keys = [
        ...Array.from({ length: 15 }, () => 'solo:1'),
        ...Array.from({ length: 15 }, () => 'solo:2'),
        ...Array.from({ length: 24 }, () => 'gate:x'),
        ...Array.from({ length: 10 }, () => null),
      ].sort(() => Math.random() - 0.5);
      const inserted = await client.insertAll(
        keys.map((key) => ({
          machine: logged,
          args: { ms: 40, key },
          ...(key === null ? {} : { concurrencyKey: key }),
        })),
      );
      const results = await Promise.all(inserted.map((r) => client.waitFor(r.id, { timeout: '60s' })));
      expect(results.map((r) => r.status)).toEqual(keys.map(() => 'done'));
      const { rows } = await db.pool.query<Run>(`SELECT key, started, ended FROM "${db.schema}".key_runs`);
      expect(rows).toHaveLength(keys.length);
      const of = (key: string) => rows.filter((r) => r.key === key);
      expect(maxOverlap(of('solo:1'))).toBe(1);
      expect(maxOverlap(of('solo:2'))).toBe(1);
      expect(maxOverlap(of('gate:x'))).toBeLessThanOrEqual(3);
      expect(maxOverlap(of('gate:x'))).toBeGreaterThan(1); // the gate raised K
      expect(maxOverlap([...of('solo:1'), ...of('solo:2')])).toBe(2); // distinct keys ran at once
      // Nothing is left holding a slot.
      const { rows: held } = await db.pool.query(
        `SELECT id FROM ${T()} WHERE concurrency_slot IS NOT NULL AND status = 'executing'`,
      );
      expect(held).toEqual([]);
    } finally {
      await client.close();
    }
  });

  it('a second executing row in a slot of a key is uncommittable; a racing pick fails and sees the first on retry', async () => {
    const insert = (key: string) =>
      db.pool.query(
        `INSERT INTO ${T()} (fsm, step, state, queue, concurrency_key) VALUES ('m', 's', '{}', 'race-keys', $1)`,
        [key],
      );
    await insert('r:1');
    await insert('r:1');
    // Directly: two executing rows in slot 0 of one key.
    const direct = await db.pool
      .query(
        `UPDATE ${T()} SET status = 'executing', concurrency_slot = 0, locked_by = 'x'
         WHERE queue = 'race-keys'`,
      )
      .catch((e: unknown) => e);
    expect(isConcurrencyConflict(direct)).toBe(true);
    // Nor can a keyed row execute outside the slots (it would escape the index).
    const slotless = await db.pool
      .query(`UPDATE ${T()} SET status = 'executing', locked_by = 'x' WHERE queue = 'race-keys'`)
      .catch((e: unknown) => e);
    expect((slotless as { code?: string }).code).toBe('23514');
    // The plain claim (for queues without keys) cannot claim a keyed row either: the node
    // learns from this refusal that the queue needs the keyed claim.
    const plain = await claimBatch(db.pool, db.schema, {
      queue: 'race-keys',
      limit: 1,
      nodeId: 'p',
      leaseMs: 30_000,
    }).catch((e: unknown) => e);
    expect(needsGuardedClaim(plain)).toBe(true);

    // Two pickers: the first's claim is not committed yet when the second picks.
    const a = new pg.Client({ connectionString: db.url });
    const b = new pg.Client({ connectionString: db.url });
    await Promise.all([a.connect(), b.connect()]);
    try {
      await a.query('BEGIN');
      const first = await claimBatch(a, db.schema, {
        queue: 'race-keys',
        limit: 1,
        nodeId: 'a',
        leaseMs: 30_000,
        guarded: true,
      });
      expect(first).toHaveLength(1);
      const second = claimBatch(b, db.schema, {
        queue: 'race-keys',
        limit: 1,
        nodeId: 'b',
        leaseMs: 30_000,
        guarded: true,
      }).catch((e: unknown) => e);
      await eventually(async () => {
        const { rows } = await db.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%picked AS%'`,
        );
        return rows[0]!.n > 0 ? true : undefined;
      }, 'the second pick waiting on the first');
      await a.query('COMMIT');
      expect(isConcurrencyConflict(await second)).toBe(true);
      // Retried, it sees the first claim and skips the key.
      expect(
        await claimBatch(b, db.schema, {
          queue: 'race-keys',
          limit: 1,
          nodeId: 'b',
          leaseMs: 30_000,
          guarded: true,
        }),
      ).toEqual([]);
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });

  it('the key persists across steps, next switches it, parking releases it, null releases it', async () => {
    await db.pool.query(keyRunsTable(db.schema)).catch(() => undefined);
    process.env.KEYS_URL = db.url;
    process.env.KEYS_SCHEMA = db.schema;
    const n = await join({ machines: [switching, logged], queues: { keys: { concurrency: 4, threads: 1 } } });
    const { id } = await n.client.insert(switching, { state: {}, concurrencyKey: 'switch:one' });
    await eventually(async () => {
      const s = await n.client.get(id);
      return s?.status === 'awaiting_signal' ? s : undefined;
    }, 'parked');
    expect((await n.client.get(id))?.concurrencyKey).toBe('switch:two');
    // Parked, it holds no slot: a step of the same key runs meanwhile.
    const other = await n.client.insert(logged, {
      args: { ms: 1, key: 'switch:two' },
      concurrencyKey: 'switch:two',
    });
    expect(await n.client.waitFor(other.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    await n.client.signal(id, 'go');
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: 'released',
    });
    expect((await n.client.get(id))?.concurrencyKey).toBeNull();
  });

  it('a node whose pick collides with another claim of the key retries it and reports concurrency:contended', async () => {
    const contended: Array<{ node: string; queue: string }> = [];
    const onContended = (e: unknown): void => void contended.push(e as { node: string; queue: string });
    subscribe('gen_durable:concurrency:contended', onContended);
    const other = new pg.Client({ connectionString: db.url });
    await other.connect();
    try {
      process.env.KEYS_URL = db.url;
      process.env.KEYS_SCHEMA = db.schema;
      const n = await join({
        machines: [logged],
        queues: { keys: { concurrency: 4, threads: 1 } },
        concurrencyLimits: { unused: { limit: 2 } }, // keyed claims from the start
      });
      // Another picker claims a row of key c:1 and holds its transaction open.
      await other.query('BEGIN');
      await other.query(
        `INSERT INTO ${T()} (fsm, step, state, queue, concurrency_key) VALUES ('m', 's', '{}', 'contend', 'c:1')`,
      );
      await claimBatch(other, db.schema, {
        queue: 'contend',
        limit: 1,
        nodeId: 'other',
        leaseMs: 60_000,
        guarded: true,
      });
      // The node's pick of a row of the same key waits on that uncommitted claim...
      const { id } = await n.client.insert(logged, { args: { ms: 1, key: 'c:1' }, concurrencyKey: 'c:1' });
      await eventually(async () => {
        const { rows } = await db.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%picked AS%'`,
        );
        return rows[0]!.n > 0 ? true : undefined;
      }, 'the node pick waiting on the other claim');
      // ...and is refused when it commits: retried, it skips the busy key.
      await other.query('COMMIT');
      await eventually(
        () => Promise.resolve(contended.length > 0 ? true : undefined),
        'concurrency:contended',
      );
      expect(contended[0]).toMatchObject({ node: n.id, queue: 'keys' });
      expect((await n.client.get(id))?.status).toBe('runnable');
    } finally {
      unsubscribe('gen_durable:concurrency:contended', onContended);
      await other.end();
    }
  });
});
