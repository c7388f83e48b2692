/**
 * The thread boundary's encoding (`threads/wire.ts`, no database): every field of every step
 * and of every result arrives as it was sent, whatever the mix of plain and other ones, and
 * the encoded forms survive the structured clone a `MessagePort` applies.
 */
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import type { StepResult } from '../runtime/executor.js';
import type { StepItem } from '../threads/protocol.js';
import {
  type WireItems,
  type WireResults,
  decodeItems,
  decodeResults,
  encodeItems,
  encodeResults,
} from '../threads/wire.js';

/** `value` as the other end of a `MessagePort` receives it. */
function cloned<T>(value: T): T {
  const { port1, port2 } = new MessageChannel();
  port1.postMessage(value);
  const got = receiveMessageOnPort(port2)!.message as T;
  port1.close();
  return got;
}

function item(id: string, more: Partial<StepItem> = {}): StepItem {
  return {
    id,
    machine: 'checkout',
    version: 1,
    step: 'charge',
    state: '{"cart":[1,2],"note":"ünïcödé 🚀, \\"quoted\\""}',
    attempt: 0,
    maxAttempts: 20,
    correlationKey: null,
    inbox: null,
    awaiting: null,
    timedOut: false,
    children: null,
    module: 'file:///app/checkout.js',
    ...more,
  };
}

describe('steps across the thread boundary', () => {
  it('arrive field for field, in order, with the fields most steps lack where they have them', () => {
    const items: StepItem[] = [
      item('1'),
      item('22', { step: 'ship', state: '{}', attempt: 3, maxAttempts: 5 }),
      item('333', { machine: 'refund', version: 2, module: 'file:///app/refund.js', state: '"text state"' }),
      item('4444', { correlationKey: 'order:42', awaiting: ['paid', 'cancelled'], timedOut: true }),
      item('5', { inbox: '[{"id":"9","name":"paid","payload":null}]', children: '[]' }),
      item('66', {
        failure: { kind: 'thread_exit', name: 'ThreadExit', message: 'worker thread died', stack: 'at x' },
      }),
      item('777', { state: '' }),
    ];
    const wire = cloned(encodeItems(items));
    expect(decodeItems(wire)).toEqual(items);
    // One kind per distinct machine, version, step and module; extras only where they are.
    expect(wire.kinds).toHaveLength(3);
    expect(wire.extras.map(([i]) => i)).toEqual([3, 4, 5]);
    // The failure is carried only where there is one (no `failure: undefined` on the others).
    expect(decodeItems(wire).map((i) => 'failure' in i)).toEqual([
      false,
      false,
      false,
      false,
      false,
      true,
      false,
    ]);
  });

  it('an empty batch', () => {
    const wire: WireItems = cloned(encodeItems([]));
    expect(decodeItems(wire)).toEqual([]);
  });
});

describe('results across the thread boundary', () => {
  const results: StepResult[] = [
    { id: '1', kind: 'done', result: '{"ok":true,"s":"é🚀"}' },
    { id: '2', kind: 'next', step: 'ship', state: '{"n":1}', delayMs: 0, consumed: [] },
    { id: '3', kind: 'next', step: 'ship', state: '{"n":2}', delayMs: 0, consumed: [], inline: true },
    { id: '4', kind: 'next', step: 'ship', state: '{}', delayMs: 0, inline: false },
    { id: '5', kind: 'next', step: 'ship', state: '{}', delayMs: 0 },
    // Not plain: each carries something the plain forms do not.
    { id: '6', kind: 'next', step: 'ship', state: '{}', delayMs: 1500, consumed: [] },
    { id: '7', kind: 'next', step: 'ship', state: '{}', delayMs: 0, consumed: ['41'] },
    { id: '8', kind: 'next', step: 'ship', state: '{}', delayMs: 0, concurrencyKey: null },
    {
      id: '9',
      kind: 'next',
      step: 'ship',
      state: '{}',
      delayMs: 0,
      rate: { limit: 'api', partition: null, weight: 2 },
    },
    { id: '10', kind: 'done', result: 'null', error: 'boom' },
    { id: '11', kind: 'retry', state: '{}', delayMs: 200, error: 'boom' },
    { id: '12', kind: 'stop', reason: 'no' },
    { id: '13', kind: 'release' },
    {
      id: '14',
      kind: 'done',
      result: '1',
      effects: {
        inserts: [],
        signals: [{ targetId: '1', targetKey: null, name: 'n', payload: 'null', dedupKey: null }],
      },
    },
    { id: '15', kind: 'done', result: '' },
  ];

  it('arrive as they were sent, plain ones as text and numbers, the others as objects', () => {
    const wire: WireResults = cloned(encodeResults(results));
    const got: StepResult[] = [];
    decodeResults(wire, (r) => got.push(r));
    const byId = (a: StepResult, b: StepResult) => Number(a.id) - Number(b.id);
    expect(got.sort(byId)).toStrictEqual([...results].sort(byId));
    expect(wire.others.map((r) => r.id)).toEqual(['6', '7', '8', '9', '10', '11', '12', '13', '14']);
  });

  it('no results', () => {
    const got: StepResult[] = [];
    decodeResults(cloned(encodeResults([])), (r) => got.push(r));
    expect(got).toEqual([]);
  });
});
