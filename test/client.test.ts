import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { GenDurableError, ValidationError, createClient, defineJob } from '../index.js';
import { z } from 'zod';
import { counter, noop, twoStep } from './fixtures/machines.js';
import { useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('client');
const { client: openClient } = useNodes(db);

async function rowCount(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${db.schema}".gen_durable`,
  );
  return rows[0]!.n;
}

async function expectInputError(promise: Promise<unknown>, code: string, path: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ValidationError);
  expect((error as ValidationError).code).toBe(code);
  expect((error as ValidationError).path).toBe(path);
}

describe('insert', () => {
  it('rejects invalid state with a typed error naming the field, writing nothing', async () => {
    const client = openClient();
    const before = await rowCount();
    // The types refuse these too (test/insert-types.test.ts); here the run-time checks are tested.
    // @ts-expect-error -- order must be a number
    await expectInputError(client.insert(twoStep, { state: { order: 'x' } }), 'invalid_state', 'state.order');
    // @ts-expect-error -- i is required
    await expectInputError(client.insert(noop, { args: {} }), 'invalid_state', 'args.i');
    await expectInputError(
      // @ts-expect-error -- paid must be a number
      client.insert(twoStep, { state: { order: 1, paid: 10n } }),
      'invalid_state',
      'state.paid',
    );
    expect(await rowCount()).toBe(before);
  });

  it('rejects values that are not JSON, bad options and unknown options before writing', async () => {
    const client = openClient();
    const loose = defineJob({ module: import.meta.url, name: 'loose', args: z.any(), perform: () => null });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const before = await rowCount();
    await expectInputError(client.insert(loose, { args: { f: () => 1 } }), 'not_serializable', 'args.f');
    await expectInputError(client.insert(loose, { args: { n: 1n } }), 'not_serializable', 'args.n');
    await expectInputError(client.insert(loose, { args: cyclic }), 'not_serializable', 'args.self');
    await expectInputError(client.insert(noop, { args: { i: 1 }, delay: '-5s' }), 'invalid_input', 'delay');
    await expectInputError(client.insert(noop, { args: { i: 1 }, delay: -5 }), 'invalid_input', 'delay');
    await expectInputError(
      client.insert(noop, { args: { i: 1 }, priority: 1.5 }),
      'invalid_input',
      'priority',
    );
    await expectInputError(client.insert(noop, { args: { i: 1 }, bogus: 1 } as never), 'invalid_input', '');
    // @ts-expect-error -- a job takes args, not state
    await expectInputError(client.insert(noop, { state: { i: 1 } }), 'invalid_input', 'state');
    await expectInputError(
      client.insert({} as never, { args: { i: 1 } } as never),
      'unknown_machine',
      'machine',
    );
    await expectInputError(
      client.insertAll([
        { machine: noop, args: { i: 1 } },
        // @ts-expect-error -- i must be a number
        { machine: noop, args: { i: 'two' } },
      ]),
      'invalid_state',
      'items[1].args.i',
    );
    expect(await rowCount()).toBe(before);
  });

  it('inserts in the caller transaction: a rollback leaves no row, a commit makes it visible', async () => {
    const client = openClient();
    const tx = await db.pool.connect();
    try {
      await tx.query('BEGIN');
      const { id } = await client.insert(noop, { args: { i: 1 }, tx, delay: '1h' });
      await tx.query('ROLLBACK');
      expect(await client.get(id)).toBeNull();

      await tx.query('BEGIN');
      const committed = await client.insert(noop, { args: { i: 2 }, tx, delay: '1h' });
      expect(await client.get(committed.id)).toBeNull(); // not visible outside before commit
      await tx.query('COMMIT');
      expect(await client.get(committed.id)).toMatchObject({ status: 'runnable', state: { i: 2 } });
    } finally {
      tx.release();
    }
  });

  it('deduplicates by correlation key while the key is occupied', async () => {
    const client = openClient();
    const first = await client.insert(noop, { args: { i: 1 }, correlationKey: 'order:1', delay: '1h' });
    const second = await client.insert(noop, { args: { i: 2 }, correlationKey: 'order:1', delay: '1h' });
    expect(first.inserted).toBe(true);
    expect(second).toEqual({ id: first.id, inserted: false });
    expect(await client.get({ key: 'order:1' })).toMatchObject({ id: first.id, state: { i: 1 } });

    // Cancelling frees the key (terminal statuses are outside the default scope).
    expect(await client.cancel({ key: 'order:1' })).toBe(true);
    const third = await client.insert(noop, { args: { i: 3 }, correlationKey: 'order:1', delay: '1h' });
    expect(third.inserted).toBe(true);
    expect(third.id).not.toBe(first.id);

    // An empty scope addresses without deduplicating.
    const a = await client.insert(noop, {
      args: { i: 4 },
      correlationKey: 'k:free',
      correlationScope: [],
      delay: '1h',
    });
    const b = await client.insert(noop, {
      args: { i: 5 },
      correlationKey: 'k:free',
      correlationScope: [],
      delay: '1h',
    });
    expect(a.inserted && b.inserted).toBe(true);
  });

  it('insertAll answers one result per row in order, duplicates included, in one statement', async () => {
    const client = openClient();
    const statements: string[] = [];
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    const counting = createClient({ pool, schema: db.schema });
    const original = pool.query.bind(pool);
    pool.query = ((config: { text: string }) => {
      statements.push(config.text);
      return original(config as never);
    }) as unknown as typeof pool.query;
    try {
      const rows = Array.from({ length: 1_000 }, (_, i) => ({
        machine: noop,
        args: { i },
        delay: '1h' as const,
        ...(i % 100 === 0 ? { correlationKey: 'batch:dup' } : {}),
      }));
      const results = await counting.insertAll(rows);
      expect(results).toHaveLength(1_000);
      expect(results.filter((r) => r.inserted)).toHaveLength(991);
      const keyed = results.filter((_, i) => i % 100 === 0);
      expect(new Set(keyed.map((r) => r.id)).size).toBe(1);
      expect(keyed[0]!.inserted).toBe(true);
      expect(statements.filter((s) => /INSERT INTO/.test(s))).toHaveLength(1);
      const existing = await client.get(results[5]!.id);
      expect(existing?.state).toEqual({ i: 5 });
    } finally {
      await counting.close();
      await pool.end();
    }
  });

  it('concurrent batches sharing new keys neither deadlock nor duplicate', async () => {
    const clients = [openClient(), openClient(), openClient()];
    const keys = Array.from({ length: 50 }, (_, i) => `race:${i}`);
    const batches = await Promise.all(
      clients.map((c, n) =>
        c.insertAll(
          (n % 2 ? [...keys].reverse() : keys).map((key) => ({
            machine: noop,
            args: { i: n },
            correlationKey: key,
            delay: '1h',
          })),
        ),
      ),
    );
    const inserted = batches.flat().filter((r) => r.inserted);
    expect(inserted).toHaveLength(50);
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(DISTINCT correlation_key)::int AS n FROM "${db.schema}".gen_durable WHERE correlation_key LIKE 'race:%'`,
    );
    expect(rows[0]!.n).toBe(50);
  });

  it('schedules with runAt and delay, and orders by priority', async () => {
    const client = openClient();
    const at = new Date(Date.now() + 3_600_000);
    const { id } = await client.insert(counter, { state: { n: 0 }, runAt: at, priority: -3 });
    const snap = await client.get(id);
    expect(Math.abs(snap!.eligibleAt.getTime() - at.getTime())).toBeLessThan(5);
    expect(snap!.priority).toBe(-3);
    const delayed = await client.get((await client.insert(counter, { state: { n: 0 }, delay: '2h' })).id);
    expect(delayed!.eligibleAt.getTime()).toBeGreaterThan(Date.now() + 3_600_000);
  });
});

describe('get, cancel, waitFor', () => {
  it('returns null for unknown instances and rejects malformed targets', async () => {
    const client = openClient();
    expect(await client.get('999999999')).toBeNull();
    expect(await client.get({ key: 'nobody' })).toBeNull();
    await expectInputError(client.get('abc'), 'invalid_input', 'target');
    await expectInputError(client.get({} as never), 'invalid_input', 'target');
  });

  it('cancel ends a live instance and is a no-op on a finished one', async () => {
    const client = openClient();
    const { id } = await client.insert(noop, { args: { i: 1 }, delay: '1h' });
    expect(await client.cancel(id)).toBe(true);
    expect(await client.cancel(id)).toBe(false);
    expect(await client.waitFor(id, { timeout: '1s' })).toMatchObject({ status: 'cancelled' });
  });

  it('waitFor answers busy with a snapshot at the deadline, and wakes on a settlement', async () => {
    const client = openClient();
    const { id } = await client.insert(noop, { args: { i: 1 }, delay: '1h' });
    const busy = await client.waitFor(id, { timeout: 50 });
    expect(busy.status).toBe('busy');
    expect(busy.snapshot.status).toBe('runnable');
    const waiting = client.waitFor(id, { timeout: '10s' }); // below the 30 s safety re-check
    const other = openClient();
    await other.cancel(id);
    expect(await waiting).toMatchObject({ status: 'cancelled' });
  });

  it('a closed client refuses work with a typed error', async () => {
    const client = createClient({ connectionString: db.url, schema: db.schema });
    await client.close();
    const error = await client.get('1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GenDurableError);
    expect((error as GenDurableError).code).toBe('closed');
  });

  it('createClient validates its options', () => {
    expect(() => createClient({ schema: db.schema })).toThrow(/connectionString/);
    expect(() => createClient({ connectionString: db.url, schema: 'bad-name;' })).toThrow(ValidationError);
  });
});
