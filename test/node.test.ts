/** A node's life: joining with validated options, backpressure, graceful drain, migrations. */
import { randomUUID } from 'node:crypto';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as join_ } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Cluster, ValidationError, migrate } from '../index.js';
import { LATEST_VERSION } from '../migrations/migrate.js';
import { claimBatch } from '../runtime/sql/claim.js';
import { releaseClaims } from '../runtime/sql/loop.js';
import { all, gated, slow } from './fixtures/machines.js';
import { imported } from './fixtures/ready-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('node');
const { join, client } = useNodes(db);

describe('Cluster.join', () => {
  it('rejects bad options with an error naming the option path, before connecting', async () => {
    const base = { connectionString: 'postgres://nobody@127.0.0.1:1/none', schema: db.schema };
    const cases: Array<[unknown, string]> = [
      [{ ...base, queues: { main: { threads: 0 } } }, 'queues.main.threads'],
      [{ ...base, queues: { main: { concurrency: 'lots' } } }, 'queues.main.concurrency'],
      [{ ...base, lease: '10 minutes' }, 'lease'],
      [{ ...base, lease: '10s', heartbeat: '6s' }, 'heartbeat'],
      [{ ...base, schema: 'no spaces' }, 'schema'],
      [{ ...base, surprise: true }, ''],
      [{ schema: db.schema }, 'connectionString'],
      [{ ...base, machines: [{}] }, 'machines[0]'],
    ];
    const node = await join({ machines: all, queues: { main: { concurrency: 1, threads: 1 } } });
    const badStop = await node.stop({ timeout: -1 }).catch((e: unknown) => e);
    expect(badStop).toBeInstanceOf(ValidationError);
    expect((badStop as ValidationError).path).toBe('options.timeout');
    for (const [options, path] of cases) {
      const error = await Cluster.join(options as never).catch((e: unknown) => e);
      expect(error, JSON.stringify(options)).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path, JSON.stringify(options)).toBe(path);
    }
  });

  // With claim-ahead off: with it on (the default), rows finishing while a pick is out let
  // the next pick claim twice as many ahead, by design (test/services.test.ts covers when).
  it('resolves once every thread has imported the machine modules (without pg), and claims nothing before', async () => {
    const log = join_(tmpdir(), `gen-durable-imports-${randomUUID()}.jsonl`);
    writeFileSync(log, '');
    const imports = (): Array<{ thread: number; pgLoaded: boolean }> =>
      readFileSync(log, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as { thread: number; pgLoaded: boolean });
    // Rows wait before the node joins: its first pick claims them at once.
    const waiting = await client().insertAll(
      Array.from({ length: 4 }, () => ({ machine: imported, args: {} })),
    );
    const importsAtPick: number[] = [];
    const onPick = (): void => {
      importsAtPick.push(imports().length);
    };
    subscribe('gen_durable:pick', onPick);
    process.env.GEN_DURABLE_TEST_IMPORTS = log;
    try {
      const node = await join({ machines: [imported], queues: { ready: { concurrency: 4, threads: 2 } } });
      const atJoin = imports();
      expect(new Set(atJoin.map((i) => i.thread)).size).toBe(2);
      // A thread runs machine code; it never connects, so it does not load pg.
      expect(atJoin.map((i) => i.pgLoaded)).toEqual([false, false]);
      for (const r of waiting)
        expect(await node.client.waitFor(r.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
      expect(importsAtPick.length).toBeGreaterThan(0);
      expect(importsAtPick.every((n) => n === 2)).toBe(true);
    } finally {
      delete process.env.GEN_DURABLE_TEST_IMPORTS;
      unsubscribe('gen_durable:pick', onPick);
      rmSync(log, { force: true });
    }
  });

  it('claims only for free slots (backpressure) and runs everything', async () => {
    const picks: Array<{ requested: number; claimed: number }> = [];
    const onPick = (message: unknown): void => {
      picks.push(message as { requested: number; claimed: number });
    };
    subscribe('gen_durable:pick', onPick);
    try {
      const node = await join({
        machines: all,
        queues: { slow: { concurrency: 3, threads: 1, claimAhead: 0 } },
      });
      const results = await node.client.insertAll(
        Array.from({ length: 12 }, () => ({ machine: slow, args: { ms: 30 } })),
      );
      for (const r of results)
        expect(await node.client.waitFor(r.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
      expect(picks.length).toBeGreaterThan(0);
      expect(Math.max(...picks.map((p) => p.requested))).toBeLessThanOrEqual(3);
      expect(picks.reduce((sum, p) => sum + p.claimed, 0)).toBe(12);
    } finally {
      unsubscribe('gen_durable:pick', onPick);
    }
  });

  it('stop() lets in-flight steps commit, returns the rest uncharged and leaves no row executing', async () => {
    // Started, not only claimed: a row whose pick is still on its way back when the node
    // stops is given back unrun, as it should be, though the table shows it executing.
    const started = new Set<string>();
    const onStart = (message: unknown): void => {
      started.add((message as { id: string }).id);
    };
    subscribe('gen_durable:step:start', onStart);
    const node = await join({ machines: all, queues: { slow: { concurrency: 4, threads: 1 } } });
    const quick = await node.client.insert(slow, { args: { ms: 50 } });
    const stuck = await node.client.insert(slow, { args: { ms: 60_000 } });
    try {
      await eventually(
        () => Promise.resolve(started.has(quick.id) && started.has(stuck.id) ? true : undefined),
        'both steps started',
      );
    } finally {
      unsubscribe('gen_durable:step:start', onStart);
    }
    // Generous for a loaded machine (a fresh thread may take a while to start): the quick
    // step needs 50 ms, the stuck one a minute.
    await node.stop({ timeout: 4_000 });
    const { rows } = await db.pool.query<{
      id: string;
      status: string;
      attempt: number;
      locked_by: string | null;
    }>(
      `SELECT id::text, status::text, attempt, locked_by FROM "${db.schema}".gen_durable WHERE id = ANY($1::bigint[]) ORDER BY id`,
      [[quick.id, stuck.id]],
    );
    expect(rows).toEqual([
      { id: quick.id, status: 'done', attempt: 0, locked_by: null },
      { id: stuck.id, status: 'runnable', attempt: 0, locked_by: null },
    ]);
    const nodes = await db.pool.query(`SELECT id FROM "${db.schema}".gen_durable_nodes WHERE id = $1`, [
      node.id,
    ]);
    expect(nodes.rows).toEqual([]);
  });

  it('drops the outcome of a step whose claim was taken over meanwhile, reporting it stale', async () => {
    const stale: string[] = [];
    const onStale = (message: unknown): void => {
      stale.push(...(message as { ids: string[] }).ids);
    };
    subscribe('gen_durable:outcome:stale', onStale);
    try {
      const node = await join({ machines: all, queues: { stale: { concurrency: 2, threads: 1 } } });
      const { id } = await node.client.insert(slow, { args: { ms: 1_000 }, queue: 'stale' });
      await eventually(
        async () => ((await node.client.get(id))?.status === 'executing' ? true : undefined),
        'claim',
      );
      // While the step runs, its lease is lost (as the reaper would do) and another node claims the row.
      await releaseClaims(db.pool, db.schema, node.id, [id]);
      const [taken] = await claimBatch(db.pool, db.schema, {
        queue: 'stale',
        limit: 1,
        nodeId: 'thief',
        leaseMs: 60_000,
      });
      expect(taken?.id).toBe(id);
      await eventually(() => Promise.resolve(stale.includes(id) ? true : undefined), 'the stale report');
      const row = await node.client.get(id);
      expect(row).toMatchObject({ status: 'executing', lockedBy: 'thief', result: null, attempt: 0 });
    } finally {
      unsubscribe('gen_durable:outcome:stale', onStale);
    }
  });

  it('a row released by a stopping node is picked up by the next node, uncharged', async () => {
    const gate = join_(tmpdir(), `gen-durable-gate-${randomUUID()}`);
    const starts: Array<{ node: string; id: string; attempt: number }> = [];
    const left: Array<{ node: string; released: number }> = [];
    const onStart = (m: unknown): void => {
      starts.push(m as { node: string; id: string; attempt: number });
    };
    const onLeft = (m: unknown): void => {
      left.push(m as { node: string; released: number });
    };
    subscribe('gen_durable:step:start', onStart);
    subscribe('gen_durable:node:left', onLeft);
    try {
      const first = await join({ machines: all, queues: { gate: { concurrency: 2, threads: 1 } } });
      const { id } = await first.client.insert(gated, { args: { gate }, queue: 'gate' });
      await eventually(
        () => Promise.resolve(starts.some((s) => s.id === id) ? true : undefined),
        'the step starting on the first node',
      );
      // The gate stays shut: the step is still running when the drain times out.
      await first.stop({ timeout: 100 });
      expect(left).toContainEqual({ node: first.id, released: 1 });
      const { rows } = await db.pool.query(
        `SELECT status::text, attempt, locked_by, lease_expires_at, claim::int FROM "${db.schema}".gen_durable WHERE id = $1`,
        [id],
      );
      expect(rows).toEqual([
        { status: 'runnable', attempt: 0, locked_by: null, lease_expires_at: null, claim: 1 },
      ]);
      writeFileSync(gate, '');
      const second = await join({ machines: all, queues: { gate: { concurrency: 2, threads: 1 } } });
      const result = await second.client.waitFor(id, { timeout: '20s' });
      expect(result).toMatchObject({
        status: 'done',
        result: { passed: true },
        snapshot: { attempt: 0, errors: [] },
      });
      expect(starts.filter((s) => s.id === id).map((s) => [s.node, s.attempt])).toEqual([
        [first.id, 0],
        [second.id, 0],
      ]);
    } finally {
      unsubscribe('gen_durable:step:start', onStart);
      unsubscribe('gen_durable:node:left', onLeft);
      rmSync(gate, { force: true });
    }
  });
});

describe('migrate', () => {
  it('is safe when several processes run it at once, and records the version once', async () => {
    const schema = `${db.schema}_m`;
    try {
      const results = await Promise.all(
        Array.from({ length: 5 }, () => migrate({ connectionString: db.url, schema })),
      );
      expect(results.filter((applied) => applied.length > 0)).toHaveLength(1);
      const { rows } = await db.pool.query<{ version: number }>(
        `SELECT version FROM "${schema}".gen_durable_migrations ORDER BY version`,
      );
      // Each version once, in order, up to the latest.
      expect(rows.map((r) => r.version)).toEqual(Array.from({ length: LATEST_VERSION }, (_, i) => i + 1));
      expect(LATEST_VERSION).toBeGreaterThanOrEqual(2);
      expect(await migrate({ connectionString: db.url, schema })).toEqual([]);
    } finally {
      await db.pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    }
  });

  it('rejects a bad schema name before connecting', async () => {
    await expect(
      migrate({ connectionString: db.url, schema: 'x"; DROP TABLE y; --' }),
    ).rejects.toBeInstanceOf(ValidationError);
  });
});

describe('notifications', () => {
  it('picks at once after the listener reconnects (a notification may have been missed)', async () => {
    const reconnected: unknown[] = [];
    const onReconnect = (message: unknown): void => {
      reconnected.push(message);
    };
    const picks: unknown[] = [];
    const onPick = (message: unknown): void => {
      picks.push(message);
    };
    subscribe('gen_durable:notifier:reconnected', onReconnect);
    subscribe('gen_durable:pick', onPick);
    try {
      const node = await join({ machines: all, queues: { main: { concurrency: 2, threads: 1 } } });
      // Let the start-up pick finish first, so that it cannot be the one finding the row.
      await eventually(() => Promise.resolve(picks.length > 0 ? true : undefined), 'the start-up pick');
      // A row written without any notification: only a pick after the reconnect can find it.
      const { rows } = await db.pool.query<{ id: string }>(
        `INSERT INTO "${db.schema}".gen_durable (fsm, step, state, queue) VALUES ('noop', 'perform', '{"i": 7}', 'main')
         RETURNING id::text`,
      );
      const before = reconnected.length;
      const killed = await db.pool.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`,
        [`gen_durable listener ${node.id}`.slice(0, 63)],
      );
      expect(killed.rowCount).toBe(1);
      expect(await node.client.waitFor(rows[0]!.id, { timeout: '30s' })).toMatchObject({
        status: 'done',
        result: { echoed: 7 },
      });
      expect(reconnected.length).toBeGreaterThan(before);
    } finally {
      unsubscribe('gen_durable:notifier:reconnected', onReconnect);
      unsubscribe('gen_durable:pick', onPick);
    }
  });
});
