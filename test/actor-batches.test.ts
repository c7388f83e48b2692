/**
 * The batch stays a batch: a claim's rows' inboxes and children are loaded in one more
 * statement (none for plain rows), and one commit of N outcomes that park, spawn, consume and carry
 * effects is the same handful of statements for 10 outcomes as for 200.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { commitBatch } from '../runtime/commit.js';
import type { StepResult } from '../runtime/executor.js';
import type { FlushEntry } from '../runtime/flusher.js';
import { toInsertRow } from '../runtime/insert-options.js';
import type { Queryable } from '../runtime/sql/db.js';
import { claimBatch, loadActorState } from '../runtime/sql/claim.js';
import { child } from './fixtures/actor-machines.js';
import { useTestSchema } from './support/db.js';

const db = useTestSchema('batches');
const T = (): string => `"${db.schema}".gen_durable`;
const S = (): string => `"${db.schema}".gen_durable_signals`;

async function seed(queue: string, n: number): Promise<void> {
  await db.pool.query(
    `INSERT INTO ${T()} (fsm, step, state, queue) SELECT 'm', 's', jsonb_build_object('n', g), $1 FROM generate_series(1, $2) g`,
    [queue, n],
  );
}

/** A Queryable over one connection that records every statement's text. */
function counting(client: pg.Client, texts: string[]): Queryable {
  return {
    query: <R extends pg.QueryResultRow>(config: { text: string; values?: unknown[] }) => {
      texts.push(config.text);
      return client.query<R>(config);
    },
  };
}

function mixed(id: string, i: number, targets: readonly string[]): StepResult {
  const state = JSON.stringify({ n: i });
  switch (i % 4) {
    case 0:
      return { id, kind: 'await', step: 's', state, names: ['go'], timeoutMs: 60_000, seen: [] };
    case 1:
      return {
        id,
        kind: 'spawn',
        step: 's',
        state,
        children: [0, 1].map((k) => toInsertRow(child, { args: { i: k, mode: 'done' }, queue: 'kids' }, '')),
      };
    case 2:
      return {
        id,
        kind: 'next',
        step: 's',
        state,
        delayMs: 0,
        effects: {
          inserts: [toInsertRow(child, { args: { i, mode: 'done' }, queue: 'kids' }, '')],
          signals: [
            {
              targetId: targets[Math.floor(i / 4)]!,
              targetKey: null,
              name: 'go',
              payload: '1',
              dedupKey: null,
            },
          ],
        },
      };
    default:
      return { id, kind: 'done', result: 'null' };
  }
}

describe('a batch of actor outcomes', () => {
  it('loads the inboxes and children of a claimed batch in one statement, and none for plain rows', async () => {
    await seed('load', 3);
    const { rows } = await db.pool.query<{ id: string }>(
      `SELECT id::text FROM ${T()} WHERE queue = 'load' ORDER BY id`,
    );
    const [a, b] = rows.map((r) => r.id);
    await db.pool.query(
      `INSERT INTO ${S()} (instance_id, name, payload) VALUES ($1, 'x', '{"v": 1}'), ($1, 'y', '2');
       `.trim(),
      [a],
    );
    await db.pool.query(`UPDATE ${T()} SET inbox = true WHERE id = $1`, [a]);
    await db.pool.query(`UPDATE ${T()} SET children = ARRAY[$2::bigint] WHERE id = $1`, [b, a]);
    const claimed = await claimBatch(db.pool, db.schema, {
      queue: 'load',
      limit: 10,
      nodeId: 'n',
      leaseMs: 30_000,
    });
    const flags = new Map(claimed.map((c) => [c.id, [c.has_inbox, c.joined]]));
    expect([flags.get(a!), flags.get(b!)]).toEqual([
      [true, false],
      [false, true],
    ]);
    const loaded = await loadActorState(
      db.pool,
      db.schema,
      claimed.filter((c) => c.has_inbox || c.joined).map((c) => c.id),
    );
    const byId = new Map(loaded.map((c) => [c.id, c]));
    const inbox = JSON.parse(byId.get(a!)!.inbox!) as Array<{ name: string; payload: unknown }>;
    expect(inbox.map((s) => [s.name, s.payload])).toEqual([
      ['x', { v: 1 }],
      ['y', 2],
    ]);
    expect(JSON.parse(byId.get(b!)!.children!)).toEqual([
      { id: a, machine: 'm', status: 'executing', state: { n: 1 }, result: null, error: null },
    ]);
    expect(loaded).toHaveLength(2);
  });

  it('commits N mixed outcomes in the same number of statements for N = 12 and N = 200', async () => {
    const conn = new pg.Client({ connectionString: db.url });
    await conn.connect();
    try {
      const counts: number[] = [];
      for (const n of [12, 200]) {
        const queue = `mixed-${n}`;
        await seed(queue, n);
        const claimed = await claimBatch(db.pool, db.schema, {
          queue,
          limit: n,
          nodeId: 'n',
          leaseMs: 30_000,
        });
        expect(claimed).toHaveLength(n);
        const ids = claimed.map((c) => c.id);
        const targets = ids.filter((_, i) => i % 4 === 0); // the parked ones
        const entries: FlushEntry[] = claimed.map((c, i) => ({
          id: c.id,
          claim: c.claim,
          queue,
          result: mixed(c.id, i, targets),
        }));
        const texts: string[] = [];
        const out = await commitBatch(counting(conn, texts), db.schema, 'n', entries);
        expect(out.applied.size).toBe(n);
        counts.push(texts.length);
        // Every effect landed: children (2 per spawn) and enqueued rows, signals, barriers.
        const { rows } = await db.pool.query<{ status: string; n: number }>(
          `SELECT status::text, count(*)::int AS n FROM ${T()} WHERE queue = $1 GROUP BY 1 ORDER BY 1`,
          [queue],
        );
        const quarter = n / 4;
        expect(Object.fromEntries(rows.map((r) => [r.status, r.n]))).toEqual({
          // parked rows each got a signal from a `next`: the re-check woke them
          runnable: 2 * quarter,
          awaiting_children: quarter,
          done: quarter,
        });
        const kids = await db.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM ${T()} WHERE queue = 'kids' AND parent_id = ANY ($1::bigint[])`,
          [ids],
        );
        expect(kids.rows[0]!.n).toBe(2 * quarter);
      }
      expect(counts[0]).toBe(counts[1]);
      // BEGIN, outcomes, inserts, barriers, signals, re-check of the parks, COMMIT.
      expect(counts[0]).toBeLessThanOrEqual(7);
    } finally {
      await conn.end();
    }
  });
});
