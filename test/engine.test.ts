import { describe, expect, it } from 'vitest';
import {
  all,
  badState,
  counter,
  exiter,
  flaky,
  garbage,
  noop,
  recovering,
  retrying,
  stopper,
  twoStep,
  typo,
} from './fixtures/machines.js';
import { eventually, useTestSchema } from './support/db.js';
import { useNodes } from './support/node.js';

const db = useTestSchema('engine');
const { join } = useNodes(db);
const main = { main: { concurrency: 8, threads: 1 } };

describe('machines and jobs on one node', () => {
  it('runs a machine through its steps, committing state between them', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(counter, { state: { n: 0 } });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('done');
    expect(result.snapshot.result).toEqual({ n: 3, trail: ['start', 'tick', 'tick'] });
  });

  it('has the next state committed and visible before the next step runs', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(twoStep, { state: { order: 7 } });
    const parked = await eventually(async () => {
      const s = await node.client.get(id);
      return s?.step === 'ship' ? s : undefined;
    }, 'the charge step to commit');
    expect(parked.status).toBe('runnable');
    expect(parked.state).toEqual({ order: 7, paid: 70 });
    expect(parked.attempt).toBe(0);
    expect(parked.eligibleAt.getTime()).toBeGreaterThan(Date.now() + 30 * 60_000);
  });

  it('finishes a job with its return value', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(noop, { args: { i: 5 } });
    expect(await node.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { echoed: 5 },
    });
  });

  it('retries a throwing job with backoff, then fails it with the error recorded', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(flaky, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.attempt).toBe(2);
    expect(result.snapshot.error).toMatch(/boom on attempt 2.*gave up after 3 attempts/);
    expect(result.snapshot.errors.map((e) => (e as { attempt: number }).attempt)).toEqual([0, 1, 2]);
  });

  it('fails a job at once when it returns stop()', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(stopper, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result).toMatchObject({ status: 'failed', error: 'refused: card declined' });
    expect(result.snapshot.attempt).toBe(0);
  });

  it('fails a step that returns garbage after bounded attempts, naming the problem', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(garbage, { state: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.attempt).toBe(1);
    expect(result.snapshot.error).toMatch(/returned a number \(42\), not an outcome/);
  });

  it('fails a step that returns an invalid state, naming the zod path', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(badState, { state: { order: 1 } });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.error).toMatch(/invalid state at state\.order/);
    expect(result.snapshot.state).toEqual({ order: 1 });
  });

  it('checks step names at run time too', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(typo, { state: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result.status).toBe('failed');
    expect(result.snapshot.error).toMatch(/next\(\) names unknown step "strat" \(typo has: start\)/);
  });

  it('lets onError choose the outcome of a failure', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(recovering, { state: { tries: 0 } });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result).toMatchObject({ status: 'done', result: { recoveredAfter: 1 } });
    expect(result.snapshot.errors).toHaveLength(1);
  });

  it('retry() runs the same step again with attempt + 1 and the new state', async () => {
    const node = await join({ machines: all, queues: main });
    const { id } = await node.client.insert(retrying, { state: { polls: 0 } });
    expect(await node.client.waitFor(id, { timeout: '20s' })).toMatchObject({
      status: 'done',
      result: { polls: 2, attempt: 2 },
    });
  });

  it('replaces a thread killed by its step and counts the step as an error', async () => {
    const node = await join({ machines: all, queues: { main: { concurrency: 4, threads: 2 } } });
    const { id } = await node.client.insert(exiter, { args: {} });
    const result = await node.client.waitFor(id, { timeout: '20s' });
    expect(result).toMatchObject({ status: 'done', result: 'survived' });
    expect(result.snapshot.errors).toHaveLength(1);
    expect(JSON.stringify(result.snapshot.errors)).toMatch(/worker thread died/);
    await eventually(
      () => Promise.resolve(node.threads('main') === 2 ? true : undefined),
      'the pool to be back at 2 threads',
    );
  });
});
