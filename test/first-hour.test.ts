/**
 * A new user's first hour: what they meet first must work or explain itself. A program in
 * one module (machines and the join together), a short lease on its own, ...
 */
import { execFile, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { Cluster, GenDurableError, ValidationError, createClient, defineJob } from '../index.js';
import { parseJoinOptions } from '../cluster/options.js';
import { all, plain, rollingV1, rollingV2 } from './fixtures/loop-machines.js';
import { countUnservedWork } from '../runtime/sql/nodes.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const db = useTestSchema('first');
const { join } = useNodes(db);

describe('a program in one module', () => {
  it('with a top-level join: worker threads start no node; the job fails at once, saying why', async () => {
    const app = fileURLToPath(new URL('./fixtures/one-module/app.ts', import.meta.url));
    const { stdout } = await run(process.execPath, ['--import', 'tsx', app, db.url, db.schema], {
      cwd: root,
      timeout: 60_000,
    });
    const out = JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(out).toMatchObject({ status: 'failed', nodes: 1 });
    expect(out.error).toMatch(/Cluster\.join\(\) was called inside a gen-durable worker thread/);
    expect(out.error).toMatch(/Keep machines in their own module/);
    const { rows } = await db.pool.query<{ attempt: number }>(
      `SELECT attempt FROM "${db.schema}".gen_durable WHERE fsm = 'one-module-hello'`,
    );
    expect(rows).toEqual([{ attempt: 0 }]); // failed at once, not retried 20 times
  });
});

describe('options', () => {
  it('a short lease alone is accepted: the heartbeat follows it', async () => {
    const base = { connectionString: db.url, machines: [] };
    expect(parseJoinOptions({ ...base, lease: '2s' }).heartbeat).toBe(666);
    expect(parseJoinOptions({ ...base, lease: '5s' }).heartbeat).toBe(1_666);
    expect(parseJoinOptions(base).heartbeat).toBe(5_000);
    expect(parseJoinOptions({ ...base, lease: '2s', heartbeat: '1s' }).heartbeat).toBe(1_000);
    const tooLong = (() => {
      try {
        return parseJoinOptions({ ...base, lease: '2s', heartbeat: '1500ms' });
      } catch (e) {
        return e;
      }
    })();
    expect(tooLong).toBeInstanceOf(ValidationError);
    expect((tooLong as ValidationError).path).toBe('heartbeat');
    const node = await join({ machines: all, queues: { lh: { concurrency: 2 } }, lease: '2s' });
    const { id } = await node.client.insert(plain, { args: { i: 7 } });
    expect(await node.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { i: 7 },
    });
  });
});

describe('a process that embeds a node', () => {
  it('drains on SIGTERM with shutdownOnSignals: exits 0, the running row is back in its queue uncharged', async () => {
    const host = fileURLToPath(new URL('./fixtures/signal-host.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', host, db.url, db.schema], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const id = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const m = /started (\d+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      child.on('exit', (code) => reject(new Error(`host exited early (${code})`)));
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const { rows } = await db.pool.query(
      `SELECT status::text, attempt, locked_by FROM "${db.schema}".gen_durable WHERE id = $1`,
      [id],
    );
    expect(rows).toEqual([{ status: 'runnable', attempt: 0, locked_by: null }]);
    const nodes = await db.pool.query(`SELECT id FROM "${db.schema}".gen_durable_nodes`);
    expect(nodes.rows).toEqual([]);
  });
});

describe('gen_durable_nodes', () => {
  it('forgets nodes that died without deregistering, and a stopped node deregisters', async () => {
    await db.pool.query(
      `INSERT INTO "${db.schema}".gen_durable_nodes (id, host, pid, heartbeat_at)
       VALUES ('long-gone', 'h', 1, now() - interval '1 hour')`,
    );
    const node = await join({ machines: all, queues: { lh: { concurrency: 1 } }, reapInterval: '100ms' });
    await eventually(async () => {
      const { rows } = await db.pool.query<{ id: string }>(`SELECT id FROM "${db.schema}".gen_durable_nodes`);
      return rows.length === 1 && rows[0]!.id === node.id ? true : undefined;
    }, 'the dead node pruned, the live one kept');
    await node.stop();
    const { rows } = await db.pool.query(`SELECT id FROM "${db.schema}".gen_durable_nodes`);
    expect(rows).toEqual([]);
  });
});

describe('application_name', () => {
  const names = async (): Promise<string[]> =>
    (
      await db.pool.query<{ name: string }>(
        `SELECT application_name AS name FROM pg_stat_activity WHERE datname = current_database()`,
      )
    ).rows.map((r) => r.name);

  it("keeps the one in the connection string on the node's every connection", async () => {
    const app = `first-hour-${Math.random().toString(36).slice(2, 8)}`;
    const url = `${db.url}${db.url.includes('?') ? '&' : '?'}application_name=${app}`;
    const node = await join({ connectionString: url, machines: all, queues: { lh: { concurrency: 2 } } });
    const { id } = await node.client.insert(plain, { args: {} });
    expect((await node.client.waitFor(id, { timeout: '20s' })).status).toBe('done');
    const mine = (await names()).filter((n) => n === app);
    expect(mine.length).toBeGreaterThanOrEqual(2); // its pool and its LISTEN connection
    expect((await names()).filter((n) => n.includes(node.id))).toEqual([]);
  });

  it('names connections after the node when none was given', async () => {
    const node = await join({ machines: all, queues: { lh: { concurrency: 2 } } });
    const { id } = await node.client.insert(plain, { args: {} });
    expect((await node.client.waitFor(id, { timeout: '20s' })).status).toBe('done');
    expect((await names()).filter((n) => n === `gen_durable ${node.id}`.slice(0, 63)).length).toBeGreaterThan(
      0,
    );
    // The plain pick has a connection of its own (it takes the pick's generic plan), closed on stop.
    expect(await names()).toContain(`gen_durable pick ${node.id}`.slice(0, 63));
    await node.stop();
    // A backend leaves pg_stat_activity moments after its connection closed.
    await eventually(
      async () => ((await names()).some((n) => n.includes(node.id)) ? undefined : true),
      'connections closed',
    );
  });
});

describe('errors a user can act on', () => {
  it('zod: zod 4 schemas from another copy (zod 3.25 zod/v4) work; zod 3 classic schemas are refused, saying what to use', async () => {
    const { viaZod3V4 } = await import('./fixtures/zod3-machines.js');
    const { z: z3 } = await import('zod3');
    const refused = (() => {
      try {
        return defineJob({
          module: import.meta.url,
          name: 'z3',
          args: z3.object({}) as never,
          perform: () => 1,
        });
      } catch (e) {
        return e;
      }
    })();
    expect(refused).toBeInstanceOf(ValidationError);
    expect((refused as ValidationError).path).toBe('args');
    expect((refused as ValidationError).message).toMatch(/zod 3 schema.*zod@\^4.*zod\/v4/);
    const node = await join({ machines: [viaZod3V4], queues: { zod3: { concurrency: 2 } } });
    const bad = await node.client.insert(viaZod3V4, { args: { n: 1.5 } }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(ValidationError);
    expect((bad as ValidationError).path).toBe('args.n');
    const { id } = await node.client.insert(viaZod3V4, { args: { n: 21 } });
    expect(await node.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { doubled: 42 },
    });
  });

  it('a garbage connection string is refused naming the field; an unreachable server says where it tried', async () => {
    for (const make of [
      () => Cluster.join({ connectionString: 'garbage', queues: { q: {} } }),
      () => Promise.resolve().then(() => createClient({ connectionString: 'mysql://x' })),
    ]) {
      const error = await make().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path).toBe('connectionString');
      expect((error as ValidationError).message).toMatch(/not a Postgres connection URL/);
    }
    const down = await Cluster.join({
      connectionString: 'postgres://postgres@127.0.0.1:1/nowhere',
      queues: { q: {} },
    }).catch((e: unknown) => e);
    expect(down).toBeInstanceOf(GenDurableError);
    expect(down).toMatchObject({ code: 'unavailable' });
    expect((down as Error).message).toMatch(
      /could not connect to Postgres at 127\.0\.0\.1:1\/nowhere: .*ECONNREFUSED/,
    );
  });
});

describe('work that nobody serves', () => {
  it('a node claims only the machine versions it knows: an old node leaves new-version rows to a new node', async () => {
    const old = await join({ machines: [rollingV1], queues: { rolling: { concurrency: 4 } } });
    const v2 = await old.client.insert(rollingV2, { args: {} });
    const v1 = await old.client.insert(rollingV1, { args: {} });
    expect(await old.client.waitFor(v1.id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: 'v1',
    });
    // The old node claimed past the v2 row without touching it.
    expect(await old.client.get(v2.id)).toMatchObject({ status: 'runnable', attempt: 0, errors: [] });
    const rolling = async () =>
      (await countUnservedWork(db.pool, db.schema, 60_000)).filter((r) => r.queue === 'rolling');
    expect(await rolling()).toEqual([
      {
        queue: 'rolling',
        fsm: 'lh-rolling',
        version: 2,
        count: 1,
        reason: 'no live node running this queue knows this machine version',
      },
    ]);
    const fresh = await join({ machines: [rollingV1, rollingV2], queues: { rolling: { concurrency: 4 } } });
    expect(await fresh.client.waitFor(v2.id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: 'v2',
    });
    expect(await rolling()).toEqual([]);
  });

  it('warns at join about machines whose queue the node does not run; status names the unserved queue', async () => {
    const warnings: Array<{ code?: string; message: string }> = [];
    const onWarning = (w: Error & { code?: string }): void => {
      warnings.push(w);
    };
    process.on('warning', onWarning);
    try {
      const node = await join({ machines: [plain], queues: { elsewhere: { concurrency: 1 } } });
      await eventually(
        () =>
          Promise.resolve(warnings.some((w) => w.code === 'GEN_DURABLE_QUEUE_NOT_RUN') ? true : undefined),
        'the warning',
      );
      const w = warnings.find((x) => x.code === 'GEN_DURABLE_QUEUE_NOT_RUN')!;
      expect(w.message).toMatch(
        /runs the queues elsewhere, but is given machine lh-plain \(version 1\) on queue "lh"/,
      );
      await node.client.insert(plain, { args: {}, queue: 'no-such-queue' });
      expect(await countUnservedWork(db.pool, db.schema, 60_000)).toContainEqual({
        queue: 'no-such-queue',
        fsm: 'lh-plain',
        version: 1,
        count: 1,
        reason: 'no live node runs this queue',
      });
    } finally {
      process.off('warning', onWarning);
    }
  });
});
