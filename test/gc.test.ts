/**
 * GC of finished rows (`cluster/gc.ts`, `runtime/sql/gc.ts`): what it deletes and keeps,
 * batches, the parent guard, its plan among many live and young finished rows, its options,
 * and that a leading node runs it. Rows are written by hand, with their `updated_at` set to
 * make them old or young: nothing waits for time to pass.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { afterEach, describe, expect, it } from 'vitest';
import { GarbageCollector } from '../cluster/gc.js';
import { parseJoinOptions } from '../cluster/options.js';
import { Cluster, ValidationError } from '../index.js';
import { statement } from '../runtime/sql/db.js';
import { DELETE_FINISHED_SQL } from '../runtime/sql/gc.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';
import { type PlanNode, planNodes } from './support/plan.js';

const db = useTestSchema('gc');
const { join } = useNodes(db);
const T = (): string => `"${db.schema}".gen_durable`;
const DAY = 86_400_000;

afterEach(async () => {
  await db.pool.query(`TRUNCATE ${T()}`);
});

/** Inserts `n` rows of `status`, last written `ageMs` ago; returns their ids. */
async function rows(
  status: string,
  n: number,
  ageMs: number,
  parentId: string | null = null,
): Promise<string[]> {
  const { rows: inserted } = await db.pool.query<{ id: string }>(
    `INSERT INTO ${T()} (fsm, step, state, queue, status, parent_id, updated_at)
     SELECT 'gc', 'perform', '{}', 'gc', $1::"${db.schema}".gen_durable_status, $3::bigint,
            now() - $4 * interval '1 millisecond'
     FROM generate_series(1, $2) RETURNING id::text`,
    [status, n, parentId, ageMs],
  );
  return inserted.map((r) => r.id);
}

async function remaining(): Promise<Array<{ status: string; n: number }>> {
  const { rows: counts } = await db.pool.query<{ status: string; n: number }>(
    `SELECT status::text, count(*)::int AS n FROM ${T()} GROUP BY status ORDER BY status`,
  );
  return counts;
}

function collector(batch: number, retentionMs = DAY): GarbageCollector {
  return new GarbageCollector({
    db: db.pool,
    schema: db.schema,
    nodeId: 'gc-test',
    retentionMs,
    batch,
    intervalMs: 60_000,
    onError: (e) => {
      throw e;
    },
  });
}

describe('GC', () => {
  it('deletes terminal rows past the retention in batches, sweeping again while batches are full; keeps live and young rows', async () => {
    await rows('done', 10, 2 * DAY);
    await rows('failed', 8, 2 * DAY);
    await rows('cancelled', 7, DAY + 60_000);
    await rows('done', 5, DAY - 60_000); // young: kept
    for (const live of ['runnable', 'executing', 'awaiting_signal', 'awaiting_children'])
      await rows(live, 2, 3 * DAY); // old but live: kept
    const swept: unknown[] = [];
    const onSwept = (m: unknown): void => void swept.push(m);
    subscribe('gen_durable:gc:swept', onSwept);
    try {
      // 25 old finished rows, batches of 10: 10, 10, then a short 5 ends the round.
      expect(await collector(10).runOnce()).toEqual({ deleted: 25, batches: 3 });
      expect(swept).toEqual([{ node: 'gc-test', deleted: 25, batches: 3 }]);
      expect(await remaining()).toEqual([
        { status: 'awaiting_children', n: 2 },
        { status: 'awaiting_signal', n: 2 },
        { status: 'done', n: 5 },
        { status: 'executing', n: 2 },
        { status: 'runnable', n: 2 },
      ]);
      expect(await collector(10).runOnce()).toEqual({ deleted: 0, batches: 1 });
    } finally {
      unsubscribe('gen_durable:gc:swept', onSwept);
    }
  });

  it('keeps a finished child whose parent awaits its children; deletes the other finished children', async () => {
    const [waiting] = await rows('awaiting_children', 1, 3 * DAY);
    const [running] = await rows('runnable', 1, 3 * DAY);
    const kept = [
      ...(await rows('done', 2, 2 * DAY, waiting)),
      ...(await rows('failed', 1, 2 * DAY, waiting)),
      ...(await rows('cancelled', 1, 2 * DAY, waiting)),
    ];
    await rows('done', 2, 2 * DAY, running); // parent not waiting: deleted
    await rows('done', 2, 2 * DAY, '999999999'); // parent gone: deleted
    const [doneParent] = await rows('done', 1, 2 * DAY);
    await rows('done', 2, 2 * DAY, doneParent); // parent finished too: both go
    // Batches of 1: every batch still finds a deletable row behind the kept ones.
    expect(await collector(1).runOnce()).toEqual({ deleted: 7, batches: 8 });
    const { rows: left } = await db.pool.query<{ id: string }>(
      `SELECT id::text FROM ${T()} WHERE status IN ('done', 'failed', 'cancelled') ORDER BY id`,
    );
    expect(left.map((r) => r.id)).toEqual(kept);
    // The parent moves on: its children can go.
    await db.pool.query(`UPDATE ${T()} SET status = 'runnable' WHERE id = $1`, [waiting]);
    expect(await collector(100).runOnce()).toEqual({ deleted: 4, batches: 1 });
  });

  it('reads about a batch of rows, not the table: 100 of 3,000 old finished rows among 40,000 live and young ones', async () => {
    await rows('runnable', 20_000, 3 * DAY);
    await rows('awaiting_signal', 5_000, 3 * DAY);
    await rows('done', 15_000, 60_000); // young
    const old = await rows('done', 3_000, 2 * DAY);
    // Children of a waiting parent, older than every other row: the guard reads them first.
    const [waiting] = await rows('awaiting_children', 1, 3 * DAY);
    await rows('done', 5, 5 * DAY, waiting);
    await db.pool.query(`ANALYZE ${T()}`);
    const conn = await db.pool.connect();
    try {
      await conn.query('BEGIN');
      const stmt = statement(db.schema, 'gc', DELETE_FINISHED_SQL, { prepared: false });
      const { rows: explained } = await conn.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
        `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${stmt.text}`,
        [DAY, 100],
      );
      const nodes = planNodes(explained[0]!['QUERY PLAN'][0]!.Plan);
      const onTable = nodes.filter((n) => n['Relation Name'] === 'gen_durable');
      expect(onTable.filter((n) => n['Node Type'] === 'Seq Scan')).toEqual([]);
      const finished = nodes.filter((n) => n['Index Name'] === 'gen_durable_finished_at');
      expect(finished.length).toBeGreaterThan(0);
      const rowsOf = (list: PlanNode[]): number =>
        list.reduce((sum, n) => sum + (n['Actual Rows'] ?? 0) * (n['Actual Loops'] ?? 1), 0);
      const pagesOf = (list: PlanNode[]): number =>
        list.reduce((sum, n) => sum + (n['Shared Hit Blocks'] ?? 0) + (n['Shared Read Blocks'] ?? 0), 0);
      const read = rowsOf(finished);
      const scans = onTable.filter((n) => n['Node Type'] !== 'ModifyTable');
      const del = nodes.find((n) => n['Node Type'] === 'ModifyTable');
      console.log(
        `gc plan: ${scans.map((n) => `${n['Index Name'] ?? n['Node Type']} ${n['Actual Rows']}x${n['Actual Loops']} (${pagesOf([n])} pages)`).join(', ')}; ${del?.['Actual Rows']} deleted`,
      );
      // The batch and the 5 kept children it passes, through the GC index...
      expect(read).toBeLessThanOrEqual(100 + 5 + 5);
      expect(pagesOf(finished)).toBeLessThanOrEqual(40);
      // ...and every row read anywhere: those, one parent probe per child, one delete probe per row.
      expect(rowsOf(scans)).toBeLessThanOrEqual(3 * 100 + 10);
      expect(del?.['Actual Rows']).toBe(100);
    } finally {
      await conn.query('ROLLBACK');
      conn.release();
    }
    expect(old).toHaveLength(3_000);
  });
});

describe('the gc option', () => {
  const base = { connectionString: 'postgres://nobody@127.0.0.1:1/none' };

  it('defaults to a day, 1,000 and a minute; takes durations as ms or strings; false disables; bad values name their path', async () => {
    expect(parseJoinOptions(base).gc).toEqual({ retention: DAY, batch: 1_000, interval: 60_000 });
    expect(parseJoinOptions({ ...base, gc: { retention: '2h', interval: 5_000 } }).gc).toEqual({
      retention: 7_200_000,
      batch: 1_000,
      interval: 5_000,
    });
    expect(parseJoinOptions({ ...base, gc: false }).gc).toBe(false);
    const cases: Array<[unknown, string]> = [
      [{ batch: 0 }, 'gc.batch'],
      [{ retention: 'forever' }, 'gc.retention'],
      [{ interval: 0 }, 'gc.interval'],
      [{ surprise: 1 }, 'gc'],
    ];
    for (const [gc, path] of cases) {
      const error = await Cluster.join({ ...base, gc } as never).catch((e: unknown) => e);
      expect(error, JSON.stringify(gc)).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path, JSON.stringify(gc)).toBe(path);
    }
  });

  it('a leading node sweeps: an old finished row goes, and the leader reports gc:swept', async () => {
    const [old] = await rows('done', 1, 2 * DAY);
    const [young] = await rows('done', 1, 0);
    const swept: Array<{ node: string; deleted: number }> = [];
    const onSwept = (m: unknown): void => void swept.push(m as { node: string; deleted: number });
    subscribe('gen_durable:gc:swept', onSwept);
    try {
      const node = await join({ gc: { retention: '1d', interval: '1h' } });
      const event = await eventually(
        () => Promise.resolve(swept.find((s) => s.node === node.id && s.deleted > 0)),
        'the leader to sweep',
      );
      expect(event).toEqual({ node: node.id, deleted: 1, batches: 1 });
      expect(node.isLeader).toBe(true);
      const { rows: left } = await db.pool.query<{ id: string }>(`SELECT id::text FROM ${T()}`);
      expect(left.map((r) => r.id)).toEqual([young]);
      expect(old).toBeDefined();
    } finally {
      unsubscribe('gen_durable:gc:swept', onSwept);
    }
  });
});
