/**
 * Hardening: inputs and faults found by review that once stalled a node, lost a wake-up,
 * charged the wrong step or reached Postgres unvalidated. Every test uses its own queue so
 * that a poisoned row of one test cannot leak into another.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as join_ } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../index.js';
import { channelFor } from '../runtime/notifications.js';
import {
  all,
  hugeDelay,
  quickWithTimeout,
  longBlocker,
  markedSleeper,
  nulError,
  nulState,
  ok,
} from './fixtures/hardening-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('hardening');
const { join, client } = useNodes(db);

async function status(id: string): Promise<{ status: string; attempt: number; errors: unknown[] }> {
  const { rows } = await db.pool.query<{ status: string; attempt: number; errors: unknown[] }>(
    `SELECT status::text AS status, attempt, errors FROM "${db.schema}".gen_durable WHERE id = $1`,
    [id],
  );
  return rows[0]!;
}

describe('an outcome Postgres cannot store never stalls the node', () => {
  it('rejects an identity scope that would let a row re-enter the unique index', async () => {
    const c = client();
    for (const scope of [['done'], ['executing'], ['runnable', 'executing']] as const) {
      const error = await c
        .insert(ok, { args: {}, queue: 'rv1', correlationKey: 'k1', correlationScope: [...scope] })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path).toBe('correlationScope');
    }
    const kept = await c.insert(ok, {
      args: {},
      queue: 'rv1',
      correlationKey: 'k1',
      correlationScope: ['runnable', 'executing', 'awaiting_signal', 'awaiting_children', 'done'],
      delay: '1h',
    });
    expect(kept.inserted).toBe(true);
  });

  it('a next state containing U+0000 fails that instance, not the node', async () => {
    const node = await join({ machines: all, queues: { rv3: { concurrency: 8, threads: 1 } } });
    const bad = await node.client.insert(nulState, { state: { s: 'x' }, queue: 'rv3' });
    const bystander = await node.client.insert(ok, { args: {}, queue: 'rv3' });
    expect(await node.client.waitFor(bystander.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    const result = await node.client.waitFor(bad.id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.error).toMatch(/U\+0000/);
  });

  it('an error message containing U+0000 is stored with the character replaced', async () => {
    const node = await join({ machines: all, queues: { rv4: { concurrency: 8, threads: 1 } } });
    const bad = await node.client.insert(nulError, { args: {}, queue: 'rv4' });
    const result = await node.client.waitFor(bad.id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.error).toContain('bad byte \ufffd here');
  });

  it('a retry delay beyond the range of a timestamp fails that instance, not the node', async () => {
    const node = await join({ machines: all, queues: { rv5: { concurrency: 8, threads: 1 } } });
    const bad = await node.client.insert(hugeDelay, { state: {}, queue: 'rv5' });
    const bystander = await node.client.insert(ok, { args: {}, queue: 'rv5' });
    expect(await node.client.waitFor(bystander.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    const result = await node.client.waitFor(bad.id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.error).toMatch(/delay must be at most/);
  });
});

describe('every delayed row is woken when due, not only the earliest', () => {
  it('insertAll with two delays: the later row runs without the safety poll', async () => {
    const node = await join({ machines: all, queues: { rv6: { concurrency: 8, threads: 1 } } });
    const [, late] = await node.client.insertAll([
      { machine: ok, args: {}, queue: 'rv6', delay: 200 },
      { machine: ok, args: {}, queue: 'rv6', delay: 800 },
    ]);
    const result = await node.client.waitFor(late.id, { timeout: '20s' });
    expect(result.status).toBe('done');
  });

  it('two inserts with different delays: the later one is not forgotten', async () => {
    const node = await join({ machines: all, queues: { rv7: { concurrency: 8, threads: 1 } } });
    // Our own LISTEN on the schema's channel: once the first wake-up reached it, it has been
    // committed, and the node's listener gets the second one after it (notifications arrive in
    // commit order), as a separate wake-up while the first row's timer is armed.
    const listener = await db.pool.connect();
    try {
      const firstWake = new Promise<void>((resolve) => {
        listener.on('notification', (n) => {
          const payload = JSON.parse(n.payload ?? '{}') as { w?: Record<string, number> };
          if (payload.w?.rv7 !== undefined) resolve();
        });
      });
      await listener.query(`LISTEN "${channelFor(db.schema)}"`);
      const early = await node.client.insert(ok, { args: {}, queue: 'rv7', delay: 300 });
      await firstWake;
      const late = await node.client.insert(ok, { args: {}, queue: 'rv7', delay: 800 });
      expect(await node.client.waitFor(early.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
      expect(await node.client.waitFor(late.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    } finally {
      await listener.query('UNLISTEN *');
      listener.removeAllListeners('notification');
      listener.release();
    }
  });
});

describe('client input is validated before it reaches Postgres', () => {
  it('rejects NUL in args or key, huge delays, out-of-range ids and non-object items', async () => {
    const c = client();
    const outcomes: Record<string, string> = {};
    const probe = async (name: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
        outcomes[name] = 'no error';
      } catch (e) {
        outcomes[name] =
          e instanceof ValidationError
            ? 'ValidationError'
            : `${(e as Error).constructor.name}: ${(e as Error).message}`;
      }
    };
    await probe('state with NUL', () => c.insert(nulState, { state: { s: 'a\u0000' } }));
    await probe('key with NUL', () => c.insert(ok, { args: {}, correlationKey: 'a\u0000' }));
    await probe('delay 1e17', () => c.insert(ok, { args: {}, queue: 'rv-none', delay: 1e17 }));
    await probe('delay 1e20', () => c.insert(ok, { args: {}, queue: 'rv-none', delay: 1e20 }));
    await probe('get 9999999999999999999', () => c.get('9999999999999999999'));
    await probe('cancel 9999999999999999999', () => c.cancel('9999999999999999999'));
    await probe('list afterId 10^25', () => c.list({ afterId: '10000000000000000000000000' }));
    await probe('insertAll([null])', () => c.insertAll([null as never]));
    await probe('insertAll(items, null)', () =>
      c.insertAll([{ machine: ok, args: {}, queue: 'rv-none' }], null as never),
    );
    await probe('insertAll(items, { tx: 5 })', () =>
      c.insertAll([{ machine: ok, args: {}, queue: 'rv-none' }], { tx: 5 as never }),
    );
    for (const [name, outcome] of Object.entries(outcomes))
      expect(`${name}: ${outcome}`).toBe(`${name}: ValidationError`);
  });
});

describe('insertAll answers duplicates with the real occupant', () => {
  it('a scope-[] row with the same key is not reported as the occupant', async () => {
    const c = client();
    const occupant = await c.insert(ok, { args: {}, queue: 'rv-none', correlationKey: 'mix' });
    const [addressOnly, dup] = await c.insertAll([
      { machine: ok, args: {}, queue: 'rv-none', correlationKey: 'mix', correlationScope: [] },
      { machine: ok, args: {}, queue: 'rv-none', correlationKey: 'mix' },
    ]);
    expect(addressOnly.inserted).toBe(true);
    expect(dup).toEqual({ id: occupant.id, inserted: false });
  });
});

describe('the thread watchdog blames the blocking step and releases the others', () => {
  it('a step whose batch was queued behind a blocked thread is released, not charged', async () => {
    const node = await join({
      machines: all,
      queues: { rv8: { concurrency: 2, threads: 1, batchSize: 1 } },
      timeoutGrace: 100,
    });
    const stops: Array<{ id: string; outcome: string; attempt: number; error?: string }> = [];
    const onStop = (m: unknown): void => {
      stops.push(m as { id: string; outcome: string; attempt: number; error?: string });
    };
    subscribe('gen_durable:step:stop', onStop);
    try {
      // One thread, one step per batch: both rows exist before the first pick, so the victim's
      // batch is claimed right after the blocker's (a full batch claims again at once, in id
      // order) and is queued on the thread the blocker holds for its 3 s timeout.
      // The thread is up and ready first: otherwise piscina may hold the victim's batch in its
      // own queue until the replacement thread is ready, and the scenario does not happen.
      const warm = await node.client.insert(ok, { args: {}, queue: 'rv8' });
      expect((await node.client.waitFor(warm.id, { timeout: '20s' })).status).toBe('done');
      // Due a moment later, so that both waiters mark their rows watched before any pick: a
      // write to a due row hides it from a concurrent pick (SKIP LOCKED), which would let the
      // victim be claimed first.
      const [blocker, victim] = await node.client.insertAll([
        { machine: longBlocker, args: {}, queue: 'rv8', delay: '1s' },
        { machine: ok, args: {}, queue: 'rv8', delay: '1s' },
      ]);
      const waits = [blocker, victim].map((r) => node.client.waitFor(r.id, { timeout: '20s' }));
      expect(await waits[0]).toMatchObject({ status: 'done', result: 'unblocked' });
      const v = await waits[1]!;
      expect(v).toMatchObject({ status: 'done', snapshot: { attempt: 0, errors: [] } });
      const of = (id: string) =>
        stops.filter((e) => e.id === id).map((e) => `${e.outcome}@${e.attempt}${e.error ? ' !' : ''}`);
      // The scenario really happened: the victim was on the killed thread and given back.
      expect(of(victim.id)).toEqual(['release@0', 'done@0']);
      expect(of(blocker.id)).toEqual(['retry@0 !', 'done@1']);
    } finally {
      unsubscribe('gen_durable:step:stop', onStop);
    }
  });

  it('the step holding a blocked thread takes the blame, not an async step whose deadline passed meanwhile', async () => {
    const node = await join({
      machines: all,
      queues: { rv9: { concurrency: 2, threads: 1, batchSize: 1 } },
      timeoutGrace: 300,
    });
    const marker = join_(tmpdir(), `gen-durable-rv9-${randomUUID()}`);
    const stops: Array<{ id: string; machine: string; outcome: string; error?: string }> = [];
    const onStop = (m: unknown): void => {
      stops.push(m as { id: string; machine: string; outcome: string; error?: string });
    };
    subscribe('gen_durable:step:stop', onStop);
    try {
      const sleeper = await node.client.insert(markedSleeper, { args: { marker }, queue: 'rv9' });
      // The sleeper runs on the thread (its 1 s deadline armed) before the blocker arrives.
      await eventually(() => Promise.resolve(existsSync(marker) ? true : undefined), 'the sleeper running');
      const blocker = await node.client.insert(longBlocker, { args: {}, queue: 'rv9' });
      const s = await node.client.waitFor(sleeper.id, { timeout: '20s' });
      const b = await node.client.waitFor(blocker.id, { timeout: '20s' });
      const of = (id: string) => stops.filter((e) => e.id === id);
      // The sleeper was still on the thread when it was killed (its own timeout never got to
      // run: the blocker held the thread), so the kill came from the sleeper's deadline.
      expect(of(sleeper.id)[0]).toMatchObject({ outcome: 'release' });
      expect(of(blocker.id)[0]).toMatchObject({
        outcome: 'retry',
        error: expect.stringMatching(/blocked its thread/),
      });
      expect(of(blocker.id).map((e) => e.outcome)).not.toContain('release');
      expect(b).toMatchObject({ status: 'done', result: 'unblocked' });
      expect(JSON.stringify(b.snapshot.errors)).toMatch(/blocked its thread/);
      expect(s).toMatchObject({ status: 'done', result: 'woke' });
      expect(JSON.stringify(s.snapshot.errors)).not.toMatch(/blocked its thread/);
    } finally {
      unsubscribe('gen_durable:step:stop', onStop);
      rmSync(marker, { force: true });
    }
  });
});

describe('a node restarted with a fixed nodeId', () => {
  it('claims left by an earlier process with the same nodeId are reaped when the node starts', async () => {
    const c = client();
    const orphan = await c.insert(ok, { args: {}, queue: 'rv10' });
    // The previous incarnation of node "fixed-node" claimed the row and was killed (kill -9).
    await db.pool.query(
      `UPDATE "${db.schema}".gen_durable SET status = 'executing', locked_by = 'fixed-node', claim = claim + 1,
         lease_expires_at = now() + interval '2 seconds' WHERE id = $1`,
      [orphan.id],
    );
    // It restarts with the same configured nodeId within the lease.
    const node = await join({
      machines: all,
      nodeId: 'fixed-node',
      queues: { rv10: { concurrency: 2, threads: 1 } },
      lease: '2s',
      heartbeat: '500ms',
      reapInterval: '300ms',
    });
    const result = await node.client.waitFor(orphan.id, { timeout: '20s' });
    const row = await status(orphan.id);
    expect(result.status).toBe('done');
    expect(row.attempt).toBe(1);
    expect(JSON.stringify(row.errors)).toMatch(/earlier process with the same node id/);
  });
});

describe('the thread watchdog', () => {
  it('no watchdog interval outlives its batch', async () => {
    const live = new Set<unknown>();
    let armed = 0;
    const si = globalThis.setInterval;
    const ci = globalThis.clearInterval;
    globalThis.setInterval = (fn: () => void, ms?: number) => {
      const h = si(fn, ms);
      if ((new Error().stack ?? '').includes('threads/pool.ts')) {
        armed++;
        live.add(h);
      }
      return h;
    };
    globalThis.clearInterval = ((h: NodeJS.Timeout) => {
      live.delete(h);
      ci(h);
    }) as typeof clearInterval;
    try {
      const node = await join({ machines: all, queues: { rv11: { concurrency: 50, threads: 2 } } });
      for (let round = 0; round < 10; round++) {
        const rs = await node.client.insertAll(
          Array.from({ length: 50 }, (_, i) => ({ machine: quickWithTimeout, args: { i }, queue: 'rv11' })),
        );
        for (const r of rs) await node.client.waitFor(r.id, { timeout: '10s' });
      }
      // The watchdog was armed (else this proves nothing) and every interval is cleared once
      // its batch settles; one that outlives its batch is never cleared, and this times out.
      expect(armed).toBeGreaterThan(0);
      await eventually(
        () => Promise.resolve(live.size === 0 ? true : undefined),
        'every watchdog cleared',
        10_000,
      );
    } finally {
      for (const h of live) ci(h as NodeJS.Timeout);
      globalThis.setInterval = si;
      globalThis.clearInterval = ci;
    }
  });
});

describe('a resolve() hook that throws', () => {
  it('fails the step (no unhandled rejection, no stuck row, no leaked slot), in a child process', async () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const script = `
      import { Cluster } from '${root}index.ts';
      import { ok } from '${root}test/fixtures/hardening-machines.ts';
      import { subscribe } from 'node:diagnostics_channel';
      let unhandled = 0;
      process.on('unhandledRejection', () => { unhandled++; });
      // Steps whose outcome went through a flush (the node frees their slot right after it).
      const stopped = new Map(), flushed = new Set();
      let onFlushed = () => {};
      subscribe('gen_durable:step:stop', (e) => stopped.set(e.id, e.outcome));
      subscribe('gen_durable:flush', () => { for (const id of stopped.keys()) flushed.add(id); onFlushed(); });
      const node = await Cluster.join({ connectionString: '${db.url}', schema: '${db.schema}', migrate: false,
        machines: [], queues: { rv12: { concurrency: 4 } }, pollInterval: '1h',
        resolve: () => { throw new Error('resolver exploded'); } });
      const { id } = await node.client.insert(ok, { args: {}, queue: 'rv12' });
      while (!flushed.has(id)) await new Promise((resolve) => { onFlushed = resolve; });
      const inFlight = node.inFlight('rv12');
      const snap = await node.client.get(id);
      console.log(JSON.stringify({ unhandled, outcome: stopped.get(id), status: snap?.status, attempt: snap?.attempt,
        errors: JSON.stringify(snap?.errors), inFlight }));
      await node.stop({ timeout: 200 });
    `;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx/esm', '--input-type=module', '-e', script],
      { cwd: root, env: { ...process.env, NODE_OPTIONS: '' }, timeout: 60_000 },
    );
    const out = JSON.parse(stdout.trim().split('\n').at(-1)!);
    // The failure is a step error (a retry charging the attempt, not a release that would
    // loop forever), committed, and the slot is freed.
    expect(out).toEqual({
      unhandled: 0,
      outcome: 'retry',
      status: 'runnable',
      attempt: 1,
      errors: expect.stringMatching(/resolver exploded/),
      inFlight: 0,
    });
  });
});
