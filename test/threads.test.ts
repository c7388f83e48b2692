/** Steps run in worker threads, contained: CPU hogs, hangs and thread deaths never spread. */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BroadcastChannel } from 'node:worker_threads';
import {
  CPU_HOG_CHANNEL,
  abortable,
  all,
  blocker,
  cpuHog,
  fast,
  memoryHog,
  noop,
  sleeper,
} from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('threads');
const { join } = useNodes(db);

describe('worker threads', () => {
  it("a CPU-bound step does not delay another queue's steps, commits or heartbeats", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gd-hog-'));
    const release = path.join(dir, 'release');
    try {
      const node = await join({
        machines: all,
        queues: { cpu: { concurrency: 1, threads: 1 }, fast: { concurrency: 4, threads: 1 } },
        heartbeat: 100,
        // Short enough that a main thread held up by the hog would lose the claim within the
        // test, long enough that a busy test machine's scheduling delays do not.
        lease: 3_000,
      });
      const spins = new BroadcastChannel(CPU_HOG_CHANNEL);
      const running = new Set<string>();
      spins.onmessage = (event) => void running.add(((event as MessageEvent).data as { id: string }).id);
      const hog = await node.client.insert(cpuHog, { args: { until: release } });
      // Claimed is not yet running: the thread may still be starting. Wait for the hog itself.
      await eventually(() => Promise.resolve(running.has(hog.id) ? true : undefined), 'the hog to spin');
      spins.close();
      const started = await eventually(async () => {
        const s = await node.client.get(hog.id);
        return s?.status === 'executing' ? s : undefined;
      }, 'the hog to start');
      // While the hog spins (it stops only when the file exists), other queues keep flowing.
      for (let i = 0; i < 5; i++) {
        const { id } = await node.client.insert(fast, { args: {} });
        expect(await node.client.waitFor(id, { timeout: '20s' })).toMatchObject({
          status: 'done',
          result: 'quick',
        });
      }
      // The hog's lease is kept alive by heartbeats from the main thread: it moves on past its
      // first expiry while the hog still spins, and the claim is never lost.
      const firstExpiry = started.leaseExpiresAt!.getTime();
      const spinning = await eventually(async () => {
        const s = await node.client.get(hog.id);
        return s && s.leaseExpiresAt && s.leaseExpiresAt.getTime() > firstExpiry + 1_000 ? s : undefined;
      }, 'heartbeats to extend the lease');
      expect(spinning).toMatchObject({ status: 'executing', attempt: 0 });
      expect(existsSync(release)).toBe(false);
      writeFileSync(release, '');
      expect(await node.client.waitFor(hog.id, { timeout: '20s' })).toMatchObject({
        status: 'done',
        result: { released: true, spins: true },
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('aborts an async step at its timeout and retries it', async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 4, threads: 1 } } });
    const { id } = await node.client.insert(sleeper, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result).toMatchObject({ status: 'done', result: 'woke' });
    expect(result.snapshot.attempt).toBe(1);
    expect(JSON.stringify(result.snapshot.errors)).toMatch(/timed out after 200ms/);
  });

  it('terminates a thread blocked past its timeout; batch-mates are released, not charged', async () => {
    const node = await join({
      machines: all,
      queues: { main: { concurrency: 8, threads: 1 } },
      timeoutGrace: 300,
    });
    // One claim, one thread, one batch: the blocker runs first and starves its batch-mates.
    const [blocked, ...mates] = await node.client.insertAll([
      { machine: blocker, args: {} },
      { machine: noop, args: { i: 1 } },
      { machine: noop, args: { i: 2 } },
    ]);
    const result = await node.client.waitFor(blocked.id, { timeout: '30s' });
    expect(result).toMatchObject({ status: 'done', result: 'unblocked' });
    expect(JSON.stringify(result.snapshot.errors)).toMatch(/blocked its thread.*terminated/);
    for (const mate of mates) {
      const done = await node.client.waitFor(mate.id, { timeout: '20s' });
      expect(done).toMatchObject({ status: 'done', snapshot: { attempt: 0, errors: [] } });
    }
    // The queue still works on a fresh thread.
    const after = await node.client.insert(noop, { args: { i: 9 } });
    expect(await node.client.waitFor(after.id, { timeout: '20s' })).toMatchObject({ status: 'done' });
    expect(node.threads('main')).toBe(1);
  });

  it('replaces a thread that runs out of memory; the step counts as an error', async () => {
    const node = await join({
      machines: all,
      queues: { mem: { concurrency: 2, threads: 1, memoryLimitMb: 32 } },
    });
    const { id } = await node.client.insert(memoryHog, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '60s' });
    expect(result).toMatchObject({ status: 'done', result: 'fit', snapshot: { attempt: 1 } });
    expect(JSON.stringify(result.snapshot.errors)).toMatch(/worker thread died/);
    expect(node.threads('mem')).toBe(1);
  });

  it('a forced shutdown fires the abort signal of running steps and returns their rows uncharged', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'gd-abort-'));
    const marker = path.join(dir, 'aborted');
    try {
      const node = await join({ machines: all, queues: { slow: { concurrency: 2, threads: 1 } } });
      const { id } = await node.client.insert(abortable, { args: { marker } });
      await eventually(
        () => Promise.resolve(existsSync(`${marker}.started`) ? true : undefined),
        'the step to run',
      );
      await node.stop({ timeout: 100 });
      expect(readFileSync(marker, 'utf8')).toBe('the node is shutting down');
      const { rows } = await db.pool.query(
        `SELECT status::text, attempt FROM "${db.schema}".gen_durable WHERE id = $1`,
        [id],
      );
      expect(rows[0]).toEqual({ status: 'runnable', attempt: 0 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
