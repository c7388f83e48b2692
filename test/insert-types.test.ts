/**
 * Typed inserts and waitFor results. The type assertions (`@ts-expect-error`, `expectTypeOf`)
 * are checked by `npm run typecheck`: an unused `@ts-expect-error` is an error, so each one
 * proves a refusal and every line without one proves acceptance. The last tests run real
 * inserts against Postgres.
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import {
  type Client,
  type InsertResult,
  type Outcome,
  ValidationError,
  defineJob,
  defineMachine,
  done,
  next,
  stop,
} from '../index.js';
import type { AnyMachine, ResultOf, TypedId } from '../index.js';
import { all, counter, noop, twoStep } from './fixtures/machines.js';
import { useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('instypes');
const { join } = useNodes(db);

// Type-only definitions (never registered or run).
const withDate = defineJob({
  module: import.meta.url,
  name: 'with-date',
  args: z.object({ ok: z.boolean() }),
  perform: async (a) =>
    (await Promise.resolve(a.ok)) ? { at: new Date(), note: undefined as string | undefined } : stop('no'),
});
const explicitDone = defineJob({
  module: import.meta.url,
  name: 'explicit-done',
  args: z.object({}),
  perform: () => done(7),
});
const nothing = defineJob({
  module: import.meta.url,
  name: 'nothing',
  args: z.object({}),
  perform: () => undefined,
});
const defaulted = defineJob({
  module: import.meta.url,
  name: 'defaulted',
  args: z.object({ n: z.number() }).default({ n: 1 }),
  perform: (a) => a.n,
});
const twoResults = defineMachine({
  module: import.meta.url,
  name: 'two-results',
  state: z.object({ n: z.number() }),
  initial: 'a',
  onError: () => done('recovered' as const),
  steps: {
    a: (s) => (s.n > 0 ? next('b', s) : done({ early: true })),
    b: (s) => Promise.resolve(done([s.n, new Date()])), // an array (Date as its JSON string)
  },
});
const annotated = defineMachine({
  module: import.meta.url,
  name: 'annotated',
  state: z.object({ n: z.number() }),
  initial: 'a',
  steps: { a: (): Outcome<'a', { n: number }> => done(1) },
});

/** Compile-time checks only: never called. */
async function typeChecks(client: Client): Promise<void> {
  // Correct inserts compile (a default in the schema makes its field optional).
  await client.insert(counter, { state: { n: 0 } });
  await client.insert(counter, { state: { n: 0, trail: ['x'] }, queue: 'q', delay: '1s' });
  await client.insert(noop, { args: { i: 1 }, correlationKey: 'k' });
  await client.insert(defaulted, {});
  await client.insert(defaulted, { args: { n: 2 } });

  // Wrong state / args types.
  // @ts-expect-error -- order must be a number
  await client.insert(twoStep, { state: { order: 'x' } });
  // @ts-expect-error -- i must be a number
  await client.insert(noop, { args: { i: '1' } });
  // @ts-expect-error -- unknown property in the state
  await client.insert(counter, { state: { n: 0, m: 1 } });

  // Missing state / args.
  // @ts-expect-error -- a machine needs its state
  await client.insert(counter, {});
  // @ts-expect-error -- a job needs its args
  await client.insert(noop, { queue: 'q' });
  // @ts-expect-error -- a required field of the args is missing
  await client.insert(noop, { args: {} });

  // args on a machine, state on a job.
  // @ts-expect-error -- a machine takes state, not args
  await client.insert(counter, { state: { n: 0 }, args: { n: 0 } });
  // @ts-expect-error -- a job takes args, not state
  await client.insert(noop, { args: { i: 1 }, state: { i: 1 } });

  // An option that does not exist.
  // @ts-expect-error -- unknown option
  await client.insert(noop, { args: { i: 1 }, priorty: 1 });

  // insertAll: each item against its own machine, a mixed array included.
  const [c, n] = await client.insertAll([
    { machine: counter, state: { n: 0 } },
    { machine: noop, args: { i: 1 } },
  ]);
  expectTypeOf(c.id).toEqualTypeOf<TypedId<typeof counter>>();
  expectTypeOf(n).toEqualTypeOf<InsertResult<typeof noop>>();
  await client.insertAll(Array.from({ length: 3 }, (_, i) => ({ machine: noop, args: { i } })));
  await client.insertAll([
    { machine: counter, state: { n: 0 } },
    // @ts-expect-error -- i must be a number
    { machine: noop, args: { i: 'x' } },
  ]);
  await client.insertAll([
    // @ts-expect-error -- a machine takes state, not args
    { machine: counter, args: { n: 0 } },
  ]);
  await client.insertAll([
    // @ts-expect-error -- a job needs its args
    { machine: noop },
  ]);

  // waitFor a typed insert result (or its id): the result is typed when done.
  const inserted = await client.insert(counter, { state: { n: 0 } });
  const w = await client.waitFor(inserted, { timeout: '1s' });
  if (w.status === 'done') {
    const r: { n: number; trail: string[] } = w.result;
    expectTypeOf(r).toEqualTypeOf<{ n: number; trail: string[] }>();
    // @ts-expect-error -- the result is not a string
    const wrong: string = w.result;
    void wrong;
  }
  const byId = await client.waitFor(inserted.id, { timeout: '1s' });
  if (byId.status === 'done') expectTypeOf(byId.result).toEqualTypeOf<{ n: number; trail: string[] }>();
  const job = await client.waitFor(n.id, { timeout: '1s' });
  if (job.status === 'done') {
    expectTypeOf(job.result).toEqualTypeOf<{ echoed: number }>();
    // @ts-expect-error -- echoed is a number
    const wrong: { echoed: string } = job.result;
    void wrong;
  }
  // @ts-expect-error -- result exists only when done
  void (await client.waitFor(inserted, { timeout: '1s' })).result;

  // A plain id or key: unknown.
  const plain = await client.waitFor('123', { timeout: '1s' });
  if (plain.status === 'done') {
    expectTypeOf(plain.result).toEqualTypeOf<unknown>();
    // @ts-expect-error -- unknown is not a string
    const wrong: string = plain.result;
    void wrong;
  }
  const keyed = await client.waitFor({ key: 'k' }, { timeout: '1s' });
  if (keyed.status === 'done') expectTypeOf(keyed.result).toEqualTypeOf<unknown>();
  const untyped: string = inserted.id; // a typed id is still a string
  void untyped;
}
void typeChecks;

describe('typed definitions', () => {
  it('carry their kind and their result type as read back (JSON)', () => {
    expect([withDate, explicitDone, nothing, defaulted, twoResults, annotated].map((d) => d.kind)).toEqual([
      'job',
      'job',
      'job',
      'job',
      'machine',
      'machine',
    ]);
    expectTypeOf(counter.kind).toEqualTypeOf<'machine'>();
    expectTypeOf(noop.kind).toEqualTypeOf<'job'>();
    // Machines: the union of what the steps (and onError) pass to done().
    expectTypeOf<ResultOf<typeof twoStep>>().toEqualTypeOf<{ shipped: number; paid?: number }>();
    expectTypeOf<ResultOf<typeof twoResults>>().toEqualTypeOf<
      { early: boolean } | Array<number | string> | 'recovered'
    >();
    // A step typed as a plain Outcome says nothing about its result.
    expectTypeOf<ResultOf<typeof annotated>>().toEqualTypeOf<unknown>();
    // Jobs: what perform returns, awaited, without stop(); done(x) is x; undefined is null.
    expectTypeOf<ResultOf<typeof withDate>>().toEqualTypeOf<{ at: string; note?: string }>();
    expectTypeOf<ResultOf<typeof explicitDone>>().toEqualTypeOf<number>();
    expectTypeOf<ResultOf<typeof nothing>>().toEqualTypeOf<null>();
    expectTypeOf(done()).toEqualTypeOf<ReturnType<typeof done<null>>>();
  });
});

describe('typed inserts at run time', () => {
  it('waitFor an insert result (or its id) answers the typed result', async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 4, threads: 1 } } });
    const [c, n] = await node.client.insertAll([
      { machine: counter, state: { n: 0 } },
      { machine: noop, args: { i: 5 } },
    ]);
    const cw = await node.client.waitFor(c, { timeout: '20s' });
    expect(cw.status).toBe('done');
    if (cw.status === 'done') expect(cw.result).toEqual({ n: 3, trail: ['start', 'tick', 'tick'] });
    const nw = await node.client.waitFor(n.id, { timeout: '20s' });
    expect(nw).toMatchObject({ status: 'done', result: { echoed: 5 } });
    const one = await node.client.insert(noop, { args: { i: 6 } });
    expect(await node.client.waitFor(one, { timeout: '20s' })).toMatchObject({ result: { echoed: 6 } });
    expect(await node.client.get(one)).toMatchObject({ id: one.id, status: 'done' });
    expect(await node.client.cancel(one)).toBe(false);
  });

  it('still validates at run time, also inserts the types cannot check (AnyMachine)', async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 1, threads: 1 } } });
    const loose: AnyMachine = noop;
    const error: unknown = await node.client.insert(loose, { args: { i: 'x' } }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toMatchObject({ code: 'invalid_state', path: 'args.i' });
    await expect(node.client.waitFor({ id: 'nope' }, { timeout: '1s' })).rejects.toBeInstanceOf(
      ValidationError,
    );
  });
});
