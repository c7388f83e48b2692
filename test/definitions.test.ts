/** Definitions: type-checked step names, run-time validation of the config, versions, backoff. */
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import {
  ValidationError,
  defaultBackoff,
  defineJob,
  defineMachine,
  done,
  next,
  parseDuration,
  stop,
} from '../index.js';
import type { Outcome } from '../index.js';
import { all, versionedV1, versionedV2 } from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('defs');
const { join } = useNodes(db);

describe('defineMachine', () => {
  it('checks step names with the type system', () => {
    const m = defineMachine({
      module: import.meta.url,
      name: 'typed',
      state: z.object({ n: z.number() }),
      initial: 'a',
      steps: {
        a: (s) => next('b', { n: s.n + 1 }),
        // @ts-expect-error -- 'bb' is not a step of this machine
        b: (s) => next('bb', s),
      },
    });
    expectTypeOf(m.initial).toEqualTypeOf<'a' | 'b'>();
    expectTypeOf(next('a', { n: 1 })).toMatchTypeOf<Outcome<'a' | 'b', { n: number }>>();
    expect(() =>
      defineMachine({
        module: import.meta.url,
        name: 'typed2',
        state: z.object({ n: z.number() }),
        // @ts-expect-error -- the initial step must be one of the steps
        initial: 'nope',
        steps: { a: () => done() },
      }),
    ).toThrow(ValidationError);
    defineMachine({
      module: import.meta.url,
      name: 'typed3',
      state: z.object({ n: z.number() }),
      initial: 'a',
      // @ts-expect-error -- the next state must match the schema's input
      steps: { a: () => next('a', { n: 'one' }) },
    });
  });

  it('validates the definition at run time with errors naming the field', () => {
    const base = {
      module: import.meta.url,
      name: 'ok',
      state: z.object({}),
      initial: 'a',
      steps: { a: () => done() },
    };
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ ...base, initial: 'b' }, 'initial'],
      [{ ...base, name: '' }, 'name'],
      [{ ...base, module: 'checkout' }, 'module'],
      [{ ...base, maxAttempts: 0 }, 'maxAttempts'],
      [{ ...base, stepTimeout: '-1s' }, 'stepTimeout'],
      [{ ...base, state: { parse: () => 1 } }, 'state'],
      [{ ...base, steps: {} }, 'steps'],
      [{ ...base, unknownOption: 1 }, ''],
    ];
    for (const [config, path] of bad) {
      let error: unknown;
      try {
        defineMachine(config as never);
      } catch (e) {
        error = e;
      }
      expect(error, JSON.stringify(path)).toBeInstanceOf(ValidationError);
      expect((error as ValidationError).path).toBe(path);
    }
    expect(() =>
      defineJob({
        module: import.meta.url,
        name: 'j',
        args: z.object({}),
        perform: () => stop('x'),
        queue: 'bad queue',
      }),
    ).toThrow(/queue/);
  });

  it('finishes each instance on the version it started on, with both versions registered', async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 4, threads: 1 } } });
    const a = await node.client.insert(versionedV1, { state: { from: 'a' } });
    const b = await node.client.insert(versionedV2, { state: { from: 'b' } });
    for (const { id } of [a, b]) {
      await eventually(
        async () => ((await node.client.get(id))?.step === 'finish' ? true : undefined),
        'first step',
      );
    }
    expect(await node.client.get(a.id)).toMatchObject({ version: 1, state: { from: 'a' } });
    expect(await node.client.get(b.id)).toMatchObject({ version: 2, state: { from: 'b', extra: 0 } });
    await db.pool.query(`UPDATE "${db.schema}".gen_durable SET eligible_at = now() WHERE id IN ($1, $2)`, [
      a.id,
      b.id,
    ]);
    // The feeder learns of the change by the usual wake-up.
    await db.pool.query(`SELECT pg_notify($1, '{"w":{"main":0}}')`, [`gen_durable_${db.schema}`]);
    expect(await node.client.waitFor(a.id, { timeout: '20s' })).toMatchObject({ result: 'v1 finished a' });
    expect(await node.client.waitFor(b.id, { timeout: '20s' })).toMatchObject({ result: 'v2 finished b' });
  });
});

describe("a job's step", () => {
  const job = (perform: (args: { n: number }) => unknown) =>
    defineJob({
      module: import.meta.url,
      name: 'step-shape',
      queue: 'q',
      args: z.object({ n: z.number() }),
      perform,
    });
  const ctx = {} as Parameters<ReturnType<typeof job>['steps']['perform']>[1];

  it('is synchronous when perform is (no promise, so no timeout timer for a quick job), and async when it is', async () => {
    const sync = job((a) => a.n + 1).steps.perform({ n: 1 }, ctx);
    expect(typeof (sync as { then?: unknown }).then).toBe('undefined');
    expect(sync).toEqual(done(2));
    const later = job((a) => Promise.resolve(a.n + 2)).steps.perform({ n: 1 }, ctx);
    expect(later).toBeInstanceOf(Promise);
    expect(await later).toEqual(done(3));
    // An outcome returned as is; anything else is the job's result.
    expect(job(() => stop('no')).steps.perform({ n: 1 }, ctx)).toEqual(stop('no'));
    // A synchronous throw stays a throw (the thread's step runner turns it into a failure).
    expect(() =>
      job(() => {
        throw new Error('boom');
      }).steps.perform({ n: 1 }, ctx),
    ).toThrow('boom');
  });
});

describe('durations and backoff', () => {
  it('parses milliseconds and unit strings, rejecting negative or malformed ones', () => {
    expect(parseDuration(250)).toBe(250);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('1.5d')).toBe(129_600_000);
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY, '5 minutes', '-5s', '', 'ms', null, {}]) {
      expect(typeof parseDuration(bad), JSON.stringify(bad)).toBe('string');
    }
  });

  it('backs off exponentially from 1s, capped at 5 minutes, with up to 10% jitter', () => {
    expect(defaultBackoff(0, () => 0)).toBe(1_000);
    expect(defaultBackoff(3, () => 0)).toBe(8_000);
    expect(defaultBackoff(3, () => 0.999)).toBe(8_799);
    expect(defaultBackoff(30, () => 0)).toBe(300_000);
    expect(defaultBackoff(30, () => 0.999)).toBeLessThanOrEqual(330_000);
  });
});
