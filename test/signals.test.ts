/**
 * The durable inbox: awaiting signals, waking on a matching name only, consumption by id,
 * re-awaiting without spinning, timeouts, dedup, "no target", a terminal outcome clearing
 * the inbox, and bad input refused before anything is written.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../index.js';
import { consumer, flakyWaiter, pack, waiter } from './fixtures/actor-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useGates } from './support/gates.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('signals');
const { join, client: openClient } = useNodes(db);
const S = (): string => `"${db.schema}".gen_durable_signals`;
const T = (): string => `"${db.schema}".gen_durable`;

const gates = useGates();

async function node() {
  return join({
    machines: [waiter, flakyWaiter, pack, consumer],
    queues: { actors: { concurrency: 8, threads: 1 } },
  });
}

/** Waits until `cond` holds (polling; `eventually` takes any defined value as done). */
function until(cond: () => boolean | Promise<boolean>, what: string): Promise<true> {
  return eventually(async () => ((await cond()) ? true : undefined), what);
}

async function status(id: string): Promise<string | undefined> {
  const { rows } = await db.pool.query<{ status: string }>(`SELECT status::text FROM ${T()} WHERE id = $1`, [
    id,
  ]);
  return rows[0]?.status;
}

async function inbox(id: string): Promise<string[]> {
  const { rows } = await db.pool.query<{ name: string }>(
    `SELECT name FROM ${S()} WHERE instance_id = $1 ORDER BY id`,
    [id],
  );
  return rows.map((r) => r.name);
}

describe('awaitSignals and signal', () => {
  it('a non-matching signal stays and wakes nothing; a matching one wakes the step with awaited and all', async () => {
    const n = await node();
    const { id } = await n.client.insert(waiter, { state: { names: ['go'], runs: 0 } });
    await until(async () => (await status(id)) === 'awaiting_signal', 'parked');
    expect(await n.client.signal(id, 'other', { n: 1 })).toMatchObject({ delivered: true });
    const go = await n.client.signal(id, 'go', { n: 2 });
    expect(go).toEqual({ delivered: true, id: expect.any(String) });
    const result = await n.client.waitFor(id, { timeout: '20s' });
    // Had `other` woken it, `woke` would have run with nothing awaited.
    expect(result).toMatchObject({
      status: 'done',
      result: {
        runs: 2,
        awaited: [{ id: (go as { id: string }).id, name: 'go', payload: { n: 2 } }],
        all: ['other', 'go'],
        timedOut: false,
        attempt: 0,
      },
    });
    // The terminal outcome cleared the inbox.
    expect(await inbox(id)).toEqual([]);
  });

  it('a signal sent before the park wakes it at once', async () => {
    const client = openClient();
    const { id } = await client.insert(waiter, { state: { names: ['early'], runs: 0 } });
    await client.signal(id, 'early', 'first');
    const n = await node();
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { runs: 2, all: ['early'], awaited: [{ name: 'early', payload: 'first' }] },
    });
  });

  it('consumes exactly the signals handed in ctx.awaited; a latecomer survives and wakes the next await', async () => {
    const n = await node();
    const { id } = await n.client.insert(consumer, { state: { first: [] } });
    await until(async () => (await status(id)) === 'awaiting_signal', 'parked');
    const first = await n.client.signal(id, 'x', 1);
    await gates.reached(id, 'got');
    const late = await n.client.signal(id, 'x', 2); // while `got` runs: not in its ctx.awaited
    gates.open(id, 'got');
    const result = await n.client.waitFor(id, { timeout: '20s' });
    expect(result).toMatchObject({
      status: 'done',
      result: {
        first: [(first as { id: string }).id],
        second: [(late as { id: string }).id],
        all: [(late as { id: string }).id],
      },
    });
  });

  it('retry keeps the signals: the retried step is handed the same ones', async () => {
    const n = await node();
    const { id } = await n.client.insert(flakyWaiter, { state: {} });
    await n.client.signal(id, 'go', 'once');
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { attempt: 1, awaited: ['once'] },
    });
  });

  it('accumulates a pack of three names by re-awaiting, one run per new signal, never spinning', async () => {
    const n = await node();
    const { id } = await n.client.insert(pack, { state: { runs: 0 } });
    const names = ['a', 'b', 'c'].sort(() => Math.random() - 0.5);
    const runsOf = async (): Promise<number | undefined> => {
      const { rows } = await db.pool.query<{ runs: number; status: string }>(
        `SELECT (state->>'runs')::int AS runs, status::text FROM ${T()} WHERE id = $1`,
        [id],
      );
      return rows[0]?.status === 'awaiting_signal' ? rows[0].runs : undefined;
    };
    await until(async () => (await runsOf()) === 0, 'parked');
    for (const [i, name] of names.slice(0, 2).entries()) {
      await n.client.signal(id, name, name.toUpperCase());
      await until(async () => (await runsOf()) === i + 1, `re-parked after ${name}`);
    }
    await n.client.signal(id, names[2]!, names[2]!.toUpperCase());
    const result = await n.client.waitFor(id, { timeout: '20s' });
    // A re-await woken again by signals it had seen would run many more times.
    expect(result).toMatchObject({ status: 'done', result: { runs: 3, names: ['a', 'b', 'c'] } });
  });

  it('a timeout wakes the step with ctx.timedOut, attempt untouched, and reports await:timeout', async () => {
    const timeouts: unknown[] = [];
    const onTimeout = (e: unknown): void => void timeouts.push(e);
    subscribe('gen_durable:await:timeout', onTimeout);
    try {
      const n = await node();
      await until(() => n.isLeader, 'the node leads (its stager fires deadlines)');
      const { id } = await n.client.insert(waiter, { state: { names: ['never'], timeout: 300, runs: 0 } });
      const result = await n.client.waitFor(id, { timeout: '20s' });
      expect(result).toMatchObject({
        status: 'done',
        result: { runs: 2, awaited: [], all: [], timedOut: true, attempt: 0 },
      });
      expect(timeouts).toContainEqual({ id, queue: 'actors', step: 'woke' });
    } finally {
      unsubscribe('gen_durable:await:timeout', onTimeout);
    }
  });

  it('a redelivered dedupKey stores nothing and answers the first id; a finished instance is no target', async () => {
    const n = await node();
    const { id } = await n.client.insert(waiter, { state: { names: ['go'], runs: 0 } });
    const first = await n.client.signal(id, 'other', 'a', { dedupKey: 'k-1' });
    const again = await n.client.signal(id, 'other', 'b', { dedupKey: 'k-1' });
    expect(first).toEqual({ delivered: true, id: expect.any(String) });
    expect(again).toEqual({ delivered: true, id: (first as { id: string }).id, duplicate: true });
    expect(await inbox(id)).toEqual(['other']);
    await n.client
      .signal({ key: 'none' }, 'go')
      .then((r) => expect(r).toEqual({ delivered: false, reason: 'no_target' }));
    await n.client.signal(id, 'go');
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { all: ['other', 'go'] },
    });
    expect(await n.client.signal(id, 'go')).toEqual({ delivered: false, reason: 'no_target' });
    expect(await n.client.signal('999999999', 'go')).toEqual({ delivered: false, reason: 'no_target' });
    expect(await inbox(id)).toEqual([]);
  });

  it('with tx, the signal exists if and only if the caller commits, and then wakes the instance', async () => {
    const n = await node();
    const { id } = await n.client.insert(waiter, { state: { names: ['go'], runs: 0 } });
    await until(async () => (await status(id)) === 'awaiting_signal', 'parked');
    const tx = await db.pool.connect();
    try {
      await tx.query('BEGIN');
      expect(await n.client.signal(id, 'go', 'rolled back', { tx })).toMatchObject({ delivered: true });
      await tx.query('ROLLBACK');
      expect(await inbox(id)).toEqual([]);
      expect(await status(id)).toBe('awaiting_signal');
      await tx.query('BEGIN');
      await n.client.signal(id, 'go', 'committed', { tx });
      await tx.query('COMMIT');
    } finally {
      tx.release();
    }
    expect(await n.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { awaited: [{ payload: 'committed' }] },
    });
  });

  it('addresses by key and stores names, keys and payloads verbatim', async () => {
    const client = openClient();
    const key = `order:'; DROP TABLE x; -- "✓" \\ %_`;
    const { id } = await client.insert(waiter, { state: { names: ['go'], runs: 0 }, correlationKey: key });
    const name = `it's -- "odd"; ünï ✓`;
    const payload = { q: `'; --`, u: '🧪 עברית', nested: [1, { a: null }] };
    expect(await client.signal({ key }, name, payload)).toMatchObject({ delivered: true });
    const { rows } = await db.pool.query(`SELECT name, payload FROM ${S()} WHERE instance_id = $1`, [id]);
    expect(rows).toEqual([{ name, payload }]);
  });

  it('refuses bad input with a typed error naming the field, storing nothing', async () => {
    const client = openClient();
    const { id } = await client.insert(waiter, { state: { names: ['go'], runs: 0 } });
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => client.signal(id, ''), 'name'],
      [() => client.signal(id, 'a\u0000b'), 'name'],
      [() => client.signal(id, 'go', { f: () => 1 }), 'payload.f'],
      [() => client.signal(id, 'go', 10n), 'payload'],
      [() => client.signal('12x', 'go'), 'target'],
      [() => client.signal({ key: '' }, 'go'), 'target'],
      [() => client.signal(id, 'go', null, { dedupKey: '' }), 'options.dedupKey'],
      [() => client.signal(id, 'go', null, { bogus: 1 } as never), 'options'],
    ];
    for (const [send, path] of cases) {
      const error = await send().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, path).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path, path).toBe(path);
    }
    expect(await inbox(id)).toEqual([]);
  });
});
