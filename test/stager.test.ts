/**
 * The stager (a leader service): one wake-up per queue when its delayed work falls due,
 * learnt from the database when it starts and after each firing, and from "due later"
 * notifications (`heard`); nothing once stopped. Driven directly, against real rows.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Stager } from '../cluster/stager.js';
import { registerNode } from '../runtime/sql/nodes.js';
import { eventually, useTestSchema } from './support/db.js';

const db = useTestSchema('stager');
const T = (): string => `"${db.schema}".gen_durable`;
const stagers: Stager[] = [];
afterEach(async () => {
  await Promise.all(stagers.splice(0).map((s) => s.stop()));
});

/** A stager recording its wake-ups, each with how many rows of the queue were due by then. */
function stager(): { stager: Stager; wakes: Array<{ queue: string; due: Promise<number> }> } {
  const wakes: Array<{ queue: string; due: Promise<number> }> = [];
  const s = new Stager({
    db: db.pool,
    schema: db.schema,
    sweepIntervalMs: 3_600_000,
    wake: (queue) => wakes.push({ queue, due: dueRows(queue) }),
    onError: (error) => {
      throw error;
    },
  });
  stagers.push(s);
  return { stager: s, wakes };
}

async function dueRows(queue: string): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${T()} WHERE queue = $1 AND status = 'runnable' AND eligible_at <= now()`,
    [queue],
  );
  return rows[0]!.n;
}

async function insertDue(queue: string, delaysMs: number[]): Promise<void> {
  await db.pool.query(
    `INSERT INTO ${T()} (fsm, step, state, queue, max_attempts, eligible_at)
     SELECT 'm', 's', '{}'::jsonb, $1, 3, now() + d * interval '1 millisecond' FROM unnest($2::int[]) AS d`,
    [queue, delaysMs],
  );
}

describe('Stager', () => {
  it("wakes a node's queue once per due time it finds at start, each after the row fell due", async () => {
    await registerNode(db.pool, db.schema, { id: 'n1', host: 'h', pid: 1, queues: ['early', 'idle'] });
    await insertDue('early', [300, 600, 600]);
    const { stager: s, wakes } = stager();
    s.start();
    await eventually(() => Promise.resolve(wakes.length >= 2 ? true : undefined), 'two wake-ups');
    // One for the row at +300 ms, one for the two at +600 ms (found by the look-up after the first).
    expect(wakes.map((w) => w.queue)).toEqual(['early', 'early']);
    expect(await Promise.all(wakes.map((w) => w.due))).toEqual([1, 3]);
    // Nothing further is due anywhere: the look-up after the second firing arms nothing.
    expect(await s.runOnce()).toEqual(new Map());
  });

  it('wakes a queue it heard of, the earliest time first, and looks up the next one itself', async () => {
    await insertDue('heard', [250, 500]);
    const { stager: s, wakes } = stager();
    s.start();
    // No node runs 'heard' yet: only the notification tells the stager (merged to the earliest).
    s.heard('heard', 250);
    s.heard('heard', 500);
    await eventually(() => Promise.resolve(wakes.length >= 2 ? true : undefined), 'two wake-ups');
    expect(await Promise.all(wakes.map((w) => w.due))).toEqual([1, 2]);
  });

  it('sends nothing once stopped, nor for what it hears while not leading', async () => {
    await insertDue('stopped', [150]);
    const { stager: s, wakes } = stager();
    s.heard('stopped', 150); // not started: ignored
    s.start();
    s.heard('stopped', 150);
    await s.stop();
    // A witness armed after the stopped one, for the same delay: its timer fires after the
    // stopped one's would have, so once it has woken, a live timer would have shown.
    const witness = stager();
    witness.stager.start();
    witness.stager.heard('stopped', 150);
    await eventually(() => Promise.resolve(witness.wakes.length > 0 ? true : undefined), 'the witness');
    expect(wakes).toEqual([]);
  });
});
