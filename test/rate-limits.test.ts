/**
 * Token-bucket rate limits (SPEC §7), on one node: grants never exceed burst + rate ×
 * elapsed (checked against every grant the buckets recorded, by a trigger of this test's
 * schema), a throttled queue wakes by itself when its tokens accrue, partitions are
 * independent, weights take several tokens and a head that does not fit blocks its bucket,
 * the limit is kept across a retry and replaced or cleared by `next`, an unknown limit stalls
 * only its rows and is reported, bad input is refused naming its field.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import { BucketHousekeeper } from '../cluster/bucket-housekeeping.js';
import { Cluster, ValidationError } from '../index.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { limited, paced, all } from './fixtures/rate-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { type Grant, grantsOf, logGrants as logGrantsIn, worstExcess } from './support/grants.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('rates');
const { join, client } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;

const logGrants = (): Promise<void> => logGrantsIn(db.pool, db.schema);
const grants = (name: string): Promise<Grant[]> => grantsOf(db.pool, db.schema, name);

/** A pick of the test's own (besides any node's): up to 10 rows of `queue`, guarded. */
const pickFor = (queue: string) =>
  claimBatch(db.pool, db.schema, { queue, limit: 10, nodeId: 'test-picker', leaseMs: 30_000, guarded: true });

/** Collects the events of a channel until `stop()` (with `extra` merged into each). */
function collect<E>(name: string, extra: () => object = () => ({})): { events: E[]; stop: () => void } {
  const events: E[] = [];
  const on = (e: unknown): void => {
    events.push({ ...(e as object), ...extra() } as E);
  };
  subscribe(name, on);
  return { events, stop: () => unsubscribe(name, on) };
}

describe('rate limits', () => {
  it('grants at most burst + rate × elapsed, and a throttled queue wakes when its tokens accrue', async () => {
    await logGrants();
    const throttled = collect<{ name: string; wanted: number; granted: number; waitMs: number }>(
      'gen_durable:rate_limit:throttled',
    );
    try {
      // No safety-net poll (useNodes): only the pick's own "tokens in N ms" can wake the queue.
      await join({
        machines: all,
        queues: { rates: { concurrency: 20 } },
        rateLimits: { paced: { allowed: 10, period: '1s', burst: 4 } },
      });
      const c = client();
      const inserted = await c.insertAll(
        Array.from({ length: 24 }, (_, n) => ({ machine: paced, args: { n }, rateLimit: 'paced' })),
      );
      const results = await Promise.all(inserted.map((r) => c.waitFor(r.id, { timeout: '30s' })));
      expect(results.map((r) => r.status)).toEqual(inserted.map(() => 'done'));
      const log = await grants('paced');
      // Every step that ran was granted a token, and no more were granted.
      expect(log.reduce((sum, g) => sum + g.granted, 0)).toBe(24);
      expect(worstExcess(log, 10, 1_000, 4)).toBeLessThanOrEqual(1e-6);
      // The first pick took the burst and was told how long until the next token.
      expect(throttled.events.length).toBeGreaterThan(0);
      expect(throttled.events[0]).toMatchObject({ name: 'paced', granted: 4 });
      expect(throttled.events.every((e) => e.waitMs > 0 && e.granted < e.wanted)).toBe(true);
    } finally {
      throttled.stop();
    }
  });

  it('a bucket grants its line in turn: rows booked at once all run, each booked', async () => {
    const starts = collect<{ id: string }>('gen_durable:step:start');
    try {
      await join({
        machines: all,
        queues: { rates: { concurrency: 10 } },
        rateLimits: { line: { allowed: 20, period: '1s', burst: 1 } },
      });
      const c = client();
      await db.pool.query(
        `CREATE TABLE IF NOT EXISTS "${db.schema}".bookings (id bigint, at timestamptz DEFAULT clock_timestamp());
         CREATE OR REPLACE FUNCTION "${db.schema}".log_booking() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO "${db.schema}".bookings (id) VALUES (NEW.id); RETURN NEW; END $$;
         CREATE OR REPLACE TRIGGER log_booking AFTER UPDATE OF eligible_at ON "${db.schema}".gen_durable
           FOR EACH ROW WHEN (NEW.rate_booked AND NEW.eligible_at > OLD.eligible_at)
           EXECUTE FUNCTION "${db.schema}".log_booking();`,
      );
      const rows = await c.insertAll(
        Array.from({ length: 8 }, (_, n) => ({ machine: paced, args: { n }, rateLimit: 'line' })),
      );
      const ids: string[] = rows.map((r) => r.id);
      await eventually(async () => {
        const states = await Promise.all(rows.map((r) => c.get(r.id)));
        return states.every((st) => st?.status === 'done') ? true : undefined;
      }, 'the line');
      // All of them started, the first at once, the others from the line (each booked).
      const order = starts.events.map((e) => e.id).filter((id) => ids.includes(id));
      expect([...order].sort()).toEqual([...ids].sort());
      expect(order[0]).toBe(ids[0]);
      const { rows: booked } = await db.pool.query<{ id: string }>(
        `SELECT DISTINCT id::text AS id FROM "${db.schema}".bookings WHERE id = ANY ($1::bigint[]) ORDER BY id`,
        [ids],
      );
      expect(booked.map((b) => b.id)).toEqual(ids.slice(1));
    } finally {
      starts.stop();
      await db.pool.query(`DROP TRIGGER IF EXISTS log_booking ON "${db.schema}".gen_durable`);
    }
  });

  it('a booked row whose slot comes a moment before its tokens is booked again at the front of the line, not the back', async () => {
    const s = `"${db.schema}"`;
    // A line of two booked rows of a bucket refilling 1 token a second (burst 1): the first
    // due now, the bucket holding 0.9 of its token; the second due in a second.
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('front', 1, 1000, 1)`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted, line, booked_until)
       VALUES ('front', '', 0.9, clock_timestamp(), 1, false, now() + interval '1 second')`,
    );
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO ${T()} (fsm, step, state, queue, rate_limit, rate_booked, eligible_at)
       VALUES ('m', 's', '{}', 'front', 'front', true, now() - interval '1 millisecond'),
              ('m', 's', '{}', 'front', 'front', true, now() + interval '1 second')
       RETURNING id::text AS id`,
    );
    const claimed = await pickFor('front');
    expect(claimed).toEqual([]);
    const { rows: after } = await db.pool.query<{ rate_booked: boolean; ms: number }>(
      `SELECT rate_booked, (extract(epoch FROM eligible_at - now()) * 1000)::float8 AS ms
       FROM ${T()} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [rows.map((r) => r.id)],
    );
    // Still booked, due again when the last tenth of its token is in (~100 ms): still first.
    expect(after[0]!.rate_booked).toBe(true);
    expect(after[0]!.ms).toBeGreaterThan(0);
    expect(after[0]!.ms).toBeLessThan(500);
    expect(after[0]!.ms).toBeLessThan(after[1]!.ms);
  });

  it('the last row of a line, due as the line ends, keeps its turn over a row that came meanwhile', async () => {
    const s = `"${db.schema}"`;
    // A bucket refilling 1 token a second (burst 2) whose line ended a moment ago: its last
    // booked row is due now; an unbooked row, due a hair earlier, came while it waited.
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('tail', 1, 1000, 2)`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted, line, booked_until)
       VALUES ('tail', '', 0, clock_timestamp() - interval '1001 milliseconds', 1, true,
               clock_timestamp() - interval '1 millisecond')`,
    );
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO ${T()} (fsm, step, state, queue, rate_limit, rate_booked, eligible_at)
       VALUES ('m', 's', '{}', 'tail', 'tail', false, now() - interval '2 milliseconds'),
              ('m', 's', '{}', 'tail', 'tail', true, now() - interval '1 millisecond')
       RETURNING id::text AS id`,
    );
    const claimed = await pickFor('tail');
    expect(claimed.map((r) => r.id)).toEqual([rows[1]!.id]);
  });

  it('a line whose booked rows are all gone (cancelled) is over once its bucket is full again', async () => {
    const s = `"${db.schema}"`;
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('vanished', 1, 1000, 2)`,
    );
    // The end of the line is an hour away, but nobody is in it and the bucket is full.
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted, line, booked_until)
       VALUES ('vanished', '', 2, clock_timestamp(), 1, true, now() + interval '1 hour')`,
    );
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO ${T()} (fsm, step, state, queue, rate_limit) VALUES ('m', 's', '{}', 'vanished', 'vanished')
       RETURNING id::text AS id`,
    );
    const claimed = await pickFor('vanished');
    expect(claimed.map((r) => r.id)).toEqual([rows[0]!.id]);
  });

  it('partitions are independent buckets; weights take several tokens and a head that does not fit blocks its bucket', async () => {
    const throttled = collect<{ name: string; wanted: number; granted: number }>(
      'gen_durable:rate_limit:throttled',
    );
    await join({
      machines: all,
      queues: { rates: { concurrency: 10 } },
      // One token an hour once the burst is spent: nothing more is granted during the test.
      rateLimits: {
        tenant: { allowed: 1, period: '1h', burst: 1 },
        heavy: { allowed: 1, period: '1h', burst: 10 },
      },
    });
    const c = client();
    const rows = await c.insertAll([
      { machine: paced, args: { n: 1 }, rateLimit: ['tenant', 'a'] },
      { machine: paced, args: { n: 2 }, rateLimit: ['tenant', 'a'] },
      { machine: paced, args: { n: 3 }, rateLimit: ['tenant', 'b'] },
      { machine: paced, args: { n: 4 }, rateLimit: ['tenant', 'b'] },
      // 4 + 4 fit in 10; the third 4 does not.
      { machine: paced, args: { n: 5 }, rateLimit: 'heavy', weight: 4 },
      { machine: paced, args: { n: 6 }, rateLimit: 'heavy', weight: 4 },
      { machine: paced, args: { n: 7 }, rateLimit: 'heavy', weight: 4 },
    ]);
    const done = [rows[0].id, rows[2].id, rows[4].id, rows[5].id];
    // Polled with reads, not waitFor: waitFor marks its row watched (an update), and a pick
    // skips rows another transaction holds, so it could take the row behind it first.
    await eventually(async () => {
      const states = await Promise.all(done.map((id) => c.get(id)));
      return states.every((st) => st?.status === 'done') ? true : undefined;
    }, 'the rows that fit');
    // The pick that left the head out booked it into the bucket's line; a lighter row that
    // comes later (the bucket holds 2) must not overtake it: a pick of our own (besides the
    // node's, woken by the insert) claims nothing and books it behind.
    await eventually(async () => {
      const { rows: b } = await db.pool.query(
        `SELECT 1 FROM "${db.schema}".gen_durable_rate_buckets WHERE name = 'heavy' AND booked_until > now()`,
      );
      return b.length === 1 ? true : undefined;
    }, 'the head booked into the line');
    const light = await c.insert(paced, { args: { n: 8 }, rateLimit: 'heavy', weight: 1 });
    const own = await pickFor('rates');
    expect(own).toEqual([]);
    throttled.stop();
    const ids = [...rows.map((r) => r.id), light.id];
    const snapshot = await Promise.all(ids.map((id) => c.get(id)));
    expect(snapshot.map((s) => s?.status)).toEqual([
      'done',
      'runnable',
      'done',
      'runnable',
      'done',
      'done',
      'runnable',
      'runnable',
    ]);
    expect(snapshot.map((s) => s?.attempt)).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(snapshot[1]?.rateLimit).toEqual(['tenant', 'a']);
    expect(snapshot[7]).toMatchObject({ rateLimit: 'heavy', weight: 1 });
    // Booked: the head until its 4 tokens (2 to go at 1 an hour), the light row after it.
    const { rows: booked } = await db.pool.query<{ id: string; rate_booked: boolean; wait_min: number }>(
      `SELECT id::text AS id, rate_booked, round(extract(epoch FROM eligible_at - now()) / 60)::int AS wait_min
       FROM ${T()} WHERE id = ANY ($1::bigint[]) ORDER BY id`,
      [[rows[1].id, rows[3].id, rows[6].id, light.id]],
    );
    expect(booked.map((b) => [b.rate_booked, b.wait_min])).toEqual([
      [true, 60], // tenant a's second row: 1 token an hour
      [true, 60],
      [true, 120], // heavy's head: 2 more tokens
      [true, 180], // the light row, behind it: 1 more
    ]);
    const { rows: buckets } = await db.pool.query<{ name: string; partition: string; tokens: number }>(
      `SELECT name, partition, round(tokens::numeric, 2)::float8 AS tokens, line, booked_until > now() AS ahead
       FROM "${db.schema}".gen_durable_rate_buckets WHERE name IN ('heavy', 'tenant') ORDER BY 1, 2`,
    );
    expect(buckets).toEqual([
      { name: 'heavy', partition: '', tokens: 2, line: true, ahead: true },
      { name: 'tenant', partition: 'a', tokens: 0, line: false, ahead: true },
      { name: 'tenant', partition: 'b', tokens: 0, line: false, ahead: true },
    ]);
    // The head was left out by a pick (it wanted more than the bucket held) and reported.
    expect(throttled.events.some((e) => e.name === 'heavy' && e.wanted > e.granted)).toBe(true);
  });

  it('a bucket whose head does not fit is passed over by the next picks: the rows behind it in the queue run, no pick loop', async () => {
    const picks = collect<{ queue: string }>('gen_durable:pick');
    try {
      await join({
        machines: all,
        // A window of two rows per pick: two rows of one bucket fill it.
        queues: { rates: { concurrency: 2 } },
        rateLimits: { narrow: { allowed: 1, period: '1h', burst: 3 } },
      });
      const c = client();
      const rows = await c.insertAll([
        { machine: paced, args: { n: 1 }, rateLimit: 'narrow', weight: 2 }, // granted: 1 token left
        { machine: paced, args: { n: 2 }, rateLimit: 'narrow', weight: 3 }, // the head that does not fit
        { machine: paced, args: { n: 3 }, rateLimit: 'narrow', weight: 1 },
        { machine: paced, args: { n: 4 }, rateLimit: 'narrow', weight: 1 },
        { machine: paced, args: { n: 5 } },
        { machine: paced, args: { n: 6 } },
      ]);
      // Polled, not waitFor (whose watched mark would make a pick skip the row it marks).
      await eventually(async () => {
        const states = await Promise.all([rows[0], rows[4], rows[5]].map((r) => c.get(r.id)));
        return states.every((st) => st?.status === 'done') ? true : undefined;
      }, 'the rows that can run');
      const held = await Promise.all([rows[1], rows[2], rows[3]].map((r) => c.get(r.id)));
      expect(held.map((h) => h?.status)).toEqual(['runnable', 'runnable', 'runnable']);
      // A handful of picks, not a loop over the same left-out rows.
      expect(picks.events.filter((p) => p.queue === 'rates').length).toBeLessThan(30);
    } finally {
      picks.stop();
    }
  });

  it('a step heavier than its burst is put off and reported, and does not block its bucket', async () => {
    const throttled = collect<{ name: string; reason?: string; ids?: string[]; wanted: number }>(
      'gen_durable:rate_limit:throttled',
    );
    try {
      await join({
        machines: all,
        queues: { rates: { concurrency: 10 } },
        rateLimits: { small: { allowed: 1, period: '1h', burst: 5 } },
      });
      const c = client();
      const [heavy, ...light] = await c.insertAll([
        { machine: paced, args: { n: 1 }, rateLimit: 'small', weight: 10 },
        ...Array.from({ length: 5 }, (_, n) => ({ machine: paced, args: { n }, rateLimit: 'small' })),
      ]);
      const ran = await Promise.all(light.map((r) => c.waitFor(r.id, { timeout: '20s' })));
      expect(ran.map((r) => r.status)).toEqual(light.map(() => 'done'));
      expect(await c.get(heavy.id)).toMatchObject({ status: 'runnable', attempt: 0 });
      expect(
        throttled.events.some(
          (e) => e.reason === 'oversized' && e.ids?.includes(heavy.id) && e.wanted === 10,
        ),
      ).toBe(true);
    } finally {
      throttled.stop();
    }
  });

  it('keeps the limit across a retry, clears it on next, and next sets a new one with its weight', async () => {
    await logGrants();
    await join({
      machines: all,
      queues: { rates: { concurrency: 4 } },
      rateLimits: {
        once: { allowed: 100, period: '1s' },
        pair: { allowed: 100, period: '1s' },
      },
    });
    const c = client();
    const { id } = await c.insert(limited, { state: {}, rateLimit: 'once' });
    const result = await c.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('done');
    // `first` ran twice (attempt 0 threw), each time taking a token; `free` took none; `heavy` took 2.
    const sum = (log: Grant[]) => log.reduce((n, g) => n + g.granted, 0);
    expect(sum(await grants('once'))).toBe(2);
    const pair = await grants('pair');
    expect(sum(pair)).toBe(2);
    expect(pair.every((g) => g.partition === 'p1')).toBe(true);
    const after = await c.get(id);
    expect(after).toMatchObject({ rateLimit: null, weight: 1 });
  });

  it('an unknown limit stalls only its rows, reported; declaring it lets them run', async () => {
    const unknown = collect<{ name: string; ids: string[]; queue: string }>('gen_durable:rate_limit:unknown');
    try {
      const first = await join({ machines: all, queues: { rates: { concurrency: 4 } } });
      const c = client();
      const { id: stalled } = await c.insert(paced, { args: { n: 1 }, rateLimit: 'nobody' });
      await eventually(
        () => Promise.resolve(unknown.events.some((e) => e.ids.includes(stalled)) ? true : undefined),
        'the unknown limit reported',
      );
      expect(unknown.events[0]).toMatchObject({ name: 'nobody', queue: 'rates' });
      // Other rows of the queue run meanwhile.
      const others = await c.insertAll(
        Array.from({ length: 5 }, (_, n) => ({ machine: paced, args: { n } })),
      );
      const ran = await Promise.all(others.map((r) => c.waitFor(r.id, { timeout: '20s' })));
      expect(ran.map((r) => r.status)).toEqual(others.map(() => 'done'));
      expect(await c.get(stalled)).toMatchObject({ status: 'runnable', attempt: 0 });
      // A node declaring the limit joins: the row runs (once its deferral is over).
      await first.stop();
      await join({
        machines: all,
        queues: { rates: { concurrency: 4 } },
        rateLimits: { nobody: { allowed: 5, period: '1s' } },
        pollInterval: '500ms',
      });
      expect((await c.waitFor(stalled, { timeout: '30s' })).status).toBe('done');
    } finally {
      unknown.stop();
    }
  });

  it('the leader removes limits no node declares, prunes buckets that are full again or of removed limits, and keeps the others', async () => {
    const s = `"${db.schema}"`;
    await db.pool.query(`DELETE FROM ${s}.gen_durable_rate_buckets`);
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst) VALUES ('kept', 10, 1000, 10)
       ON CONFLICT (name) DO UPDATE SET allowed = 10, period_ms = 1000, burst = 10`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted) VALUES
         ('kept', 'full', 10, now(), 0),
         ('kept', 'refilled', 0, now() - interval '1 hour', 10),
         ('kept', 'spent', 0, now(), 10),
         ('gone', '', 0, now(), 1)`,
    );
    const housekeeper = new BucketHousekeeper({
      db: db.pool,
      schema: db.schema,
      intervalMs: 60_000,
      onError: (e) => {
        throw e;
      },
    });
    // Limits: one a registered node declares, one nobody has declared for two minutes (its
    // bucket, full again, goes with it), one nobody declares but declared a moment ago (kept).
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_nodes (id, host, pid, queues, rate_limits) VALUES ('declarer', 'h', 1, '{}', '{declared}')`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst, updated_at) VALUES
         ('declared', 1, 1000, 1, now() - interval '2 minutes'), ('stale', 1, 1000, 1, now() - interval '2 minutes')`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted) VALUES
         ('declared', '', 0, now(), 1), ('stale', '', 0, now() - interval '2 minutes', 1)`,
    );
    // A limit nobody declares whose bucket still owes tokens stays, with its bucket: declared
    // again, it carries on from what it granted.
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_configs (name, allowed, period_ms, burst, updated_at)
       VALUES ('owed', 1, 3600000, 10, now() - interval '2 minutes')`,
    );
    await db.pool.query(
      `INSERT INTO ${s}.gen_durable_rate_buckets (name, partition, tokens, refreshed_at, granted)
       VALUES ('owed', '', 0, now(), 10)`,
    );
    expect(await housekeeper.runOnce()).toBe(4);
    const { rows } = await db.pool.query(
      `SELECT name, partition FROM ${s}.gen_durable_rate_buckets ORDER BY name, partition`,
    );
    expect(rows).toEqual([
      { name: 'declared', partition: '' },
      { name: 'kept', partition: 'spent' },
      { name: 'owed', partition: '' },
    ]);
    const { rows: configs } = await db.pool.query(
      `SELECT name FROM ${s}.gen_durable_rate_configs WHERE name IN ('declared', 'stale', 'kept', 'owed') ORDER BY name`,
    );
    expect(configs.map((c: { name: string }) => c.name)).toEqual(['declared', 'kept', 'owed']);
    await db.pool.query(`DELETE FROM ${s}.gen_durable_nodes WHERE id = 'declarer'`);
  });

  it('refuses bad limits, weights and rate-limit declarations naming the field, writing nothing', async () => {
    const c = client();
    const cases: Array<[object, string]> = [
      [{ rateLimit: 'paced', weight: 0 }, 'weight'],
      [{ rateLimit: 'paced', weight: 1.5 }, 'weight'],
      [{ weight: 2 }, 'weight'],
      [{ rateLimit: '' }, 'rateLimit'],
      [{ rateLimit: ['tenant', ''] }, 'rateLimit'],
      [{ rateLimit: ['tenant'] }, 'rateLimit'],
      [{ rateLimit: 7 }, 'rateLimit'],
    ];
    for (const [options, path] of cases) {
      const error = await c.insert(paced, { args: { n: -999 }, ...options }).catch((e: unknown) => e);
      expect(error, JSON.stringify(options)).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path.startsWith(path), JSON.stringify(options)).toBe(true);
    }
    const batch = await c
      .insertAll([
        { machine: paced, args: { n: -999 }, rateLimit: 'paced' },
        { machine: paced, args: { n: -999 }, rateLimit: 'paced', weight: -1 },
      ])
      .catch((e: unknown) => e);
    expect((batch as ValidationError).path).toBe('items[1].weight');
    const joins: Array<[object, string]> = [
      [{ x: { allowed: 5, period: 'soon' } }, 'rateLimits.x.period'],
      [{ x: { allowed: 0, period: '1s' } }, 'rateLimits.x.allowed'],
      [{ x: { allowed: 5, period: '1s', burst: 0 } }, 'rateLimits.x.burst'],
      [{ x: { allowed: 5, period: '1s', rate: 3 } }, 'rateLimits.x'],
      [{ x: { allowed: 5 } }, 'rateLimits.x.period'],
      [{ 'bad name': { allowed: 5, period: '1s' } }, 'rateLimits.bad name'],
    ];
    for (const [rateLimits, path] of joins) {
      const error = await Cluster.join({
        connectionString: db.url,
        schema: db.schema,
        rateLimits,
      } as never).catch((e: unknown) => e);
      expect(error, path).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path, path).toBe(path);
    }
    const { rows } = await db.pool.query(
      `SELECT (SELECT count(*) FROM ${T()} WHERE state->>'n' = '-999')::int AS instances,
              (SELECT count(*) FROM "${db.schema}".gen_durable_rate_configs WHERE name IN ('x', 'bad name'))::int AS configs`,
    );
    expect(rows[0]).toEqual({ instances: 0, configs: 0 });
  });
});
