/**
 * A frozen node (SIGSTOP) past its lease, with real node processes (`fixtures/chaos-host.ts`):
 * the leader (this process's node) reaps its claims, another node re-runs them to the end,
 * and when the frozen node thaws (SIGCONT) and finishes its steps, its late outcomes commit
 * nothing — the rows keep the other node's result, attempt and claim — and it reports them
 * on `gen_durable:outcome:stale`.
 *
 * The frozen node is provably mid-step: each step records its start in a side table and then
 * waits for a gate file, which is created only once every thread of that process is stopped.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chaosRunsTable, gated } from './fixtures/chaos-machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { CHAOS_HOST, allStarted, useHosts } from './support/host.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('frozen');
const { join, client } = useNodes(db);
const hosts = useHosts();
const dir = mkdtempSync(path.join(tmpdir(), 'gen-durable-frozen-'));
const N = 4;
const LEASE = '3s';

beforeAll(async () => {
  await db.pool.query(chaosRunsTable(db.schema));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function startHost(id: string) {
  const options = {
    queues: { frozen: { concurrency: N, threads: 1 } },
    lease: LEASE,
    heartbeat: '500ms',
    campaignInterval: '200ms',
    pollInterval: '1h',
    poolSize: 3,
  };
  return hosts.start(id, {
    fixture: CHAOS_HOST,
    args: [db.url, db.schema, id, JSON.stringify(options)],
    env: { CHAOS_URL: db.url, CHAOS_SCHEMA: db.schema, CHAOS_PRINT_FLUSH: '1' },
  });
}

async function rowsOf(ids: readonly string[]) {
  const { rows } = await db.pool.query<Record<string, unknown>>(
    `SELECT id::text, status::text, step, result, attempt, claim::text, locked_by, lease_expires_at,
            last_error, errors, updated_at
     FROM "${db.schema}".gen_durable WHERE id = ANY ($1::bigint[]) ORDER BY id`,
    [ids],
  );
  return rows;
}

async function runsOf(ids: readonly string[]) {
  const { rows } = await db.pool.query<{ instance: string; node: string; attempt: number }>(
    `SELECT instance::text, node, attempt FROM "${db.schema}".chaos_runs
     WHERE instance = ANY ($1::bigint[]) ORDER BY node, instance, seq`,
    [ids],
  );
  return rows;
}

describe('a frozen node', () => {
  it('loses its claims past the lease; they run elsewhere, and its late outcomes commit nothing and are reported stale', async () => {
    const reaped: Array<{ ids: string[]; cause: string }> = [];
    const onReaped = (m: unknown): void => void reaped.push(m as { ids: string[]; cause: string });
    subscribe('gen_durable:reaper:reaped', onReaped);
    try {
      // The leader: this process's node, which runs no queue the work is on.
      const leader = await join({
        queues: { idle: { concurrency: 1 } },
        lease: LEASE,
        heartbeat: '500ms',
        reapInterval: '200ms',
        campaignInterval: '200ms',
        poolSize: 3,
      });
      await eventually(
        () => Promise.resolve(leader.isLeader ? true : undefined),
        'the in-process node to lead',
        15_000,
      );
      const a = startHost('frozen-a');
      await allStarted([a], 30_000);
      const gate = path.join(dir, 'open');
      const ids = (
        await client().insertAll(Array.from({ length: N }, () => ({ machine: gated, args: { gate } })))
      )
        .map((r): string => r.id)
        .sort((x, y) => Number(x) - Number(y));

      // Every step is running on A: each recorded its start, and A holds every row.
      await eventually(
        async () => ((await runsOf(ids)).length === N ? true : undefined),
        'the steps to start on A',
        30_000,
      );
      expect(await runsOf(ids)).toEqual(ids.map((id) => ({ instance: id, node: 'frozen-a', attempt: 0 })));
      expect(
        (await rowsOf(ids)).map((r) => ({ status: r.status, locked_by: r.locked_by, claim: r.claim })),
      ).toEqual(ids.map(() => ({ status: 'executing', locked_by: 'frozen-a', claim: '1' })));

      a.kill('SIGSTOP');
      await eventually(() => Promise.resolve(a.stopped ? true : undefined), 'A to be stopped', 10_000);
      const frozenAt = Date.now();
      // Only now may the steps finish: A's are stopped mid-step, waiting for this gate.
      writeFileSync(gate, '');
      const b = startHost('frozen-b');

      await eventually(
        async () => ((await rowsOf(ids)).every((r) => r.status === 'done') ? true : undefined),
        'the rows to be re-run elsewhere and finish',
        45_000,
      );
      const finishedAt = Date.now();
      const settled = await rowsOf(ids);
      expect(settled).toEqual(
        ids.map((id): unknown =>
          expect.objectContaining({
            id,
            status: 'done',
            result: { by: 'frozen-b', attempt: 1 }, // reaped once (attempt + 1), then B's run
            attempt: 1,
            claim: '2',
            locked_by: null,
            lease_expires_at: null,
          }),
        ),
      );
      // The leader reaped each claim once; B ran each step once (A's had started before the freeze).
      expect(
        reaped
          .flatMap((r) => r.ids)
          .filter((id) => ids.includes(id))
          .sort(),
      ).toEqual([...ids].sort());
      expect(await runsOf(ids)).toEqual([
        ...ids.map((id) => ({ instance: id, node: 'frozen-a', attempt: 0 })),
        ...ids.map((id) => ({ instance: id, node: 'frozen-b', attempt: 1 })),
      ]);
      expect(a.alive).toBe(true);
      expect(a.count('stale')).toBe(0); // frozen: it has said nothing since

      const flushedBefore = a.events.length;
      a.kill('SIGCONT');
      const thawedAt = Date.now();
      // Thawed, A finishes its steps and flushes their outcomes...
      const flushes = await eventually(
        () => {
          const flushed = a.events.slice(flushedBefore).filter((e) => e.event === 'flush');
          return Promise.resolve(
            flushed.reduce((n, e) => n + (e.outcomes as number), 0) >= N ? flushed : undefined,
          );
        },
        'A to flush its late outcomes',
        30_000,
      );
      // ...which changed nothing, not even updated_at,
      expect(await rowsOf(ids)).toEqual(settled);
      expect(flushes.map((e) => e.applied)).toEqual(flushes.map(() => 0));
      // and which it reports stale.
      await eventually(
        () => {
          const said = new Set(a.events.filter((e) => e.event === 'stale').flatMap((e) => e.ids ?? []));
          return Promise.resolve(ids.every((id) => said.has(id)) ? true : undefined);
        },
        'A to report its outcomes stale',
        30_000,
      );
      const stale = a.events.filter((e) => e.event === 'stale');
      expect(stale.every((e) => e.node === 'frozen-a')).toBe(true);
      expect(stale.flatMap((e) => e.ids).sort()).toEqual([...ids].sort());
      expect(await rowsOf(ids)).toEqual(settled);
      expect(b.count('stale')).toBe(0);

      // Thawed, A is a working node again: it drains and stops cleanly.
      a.kill('SIGTERM');
      expect(await a.exited).toBe(0);
      console.log(
        `frozen node: ${N} claims reaped (${[...new Set(reaped.map((r) => r.cause))].join(', ')}), ` +
          `re-run and done ${finishedAt - frozenAt} ms after the freeze; ` +
          `stale reported ${a.events.find((e) => e.event === 'stale')!.at - thawedAt} ms after SIGCONT`,
      );
    } finally {
      unsubscribe('gen_durable:reaper:reaped', onReaped);
    }
  }, 120_000);
});
