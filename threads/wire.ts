/**
 * How batches of steps and their results cross the thread boundary: as a few strings and
 * typed arrays instead of one object per step.
 *
 * A message between threads is copied by the structured clone algorithm, which walks every
 * object and writes every property, and the receiving thread builds them all again: ~0.7–0.9
 * µs per step of a no-op batch as objects, on each side. A batch is instead one string
 * holding each step's id and state, one `Int32Array` of their lengths and numbers, and a
 * table of the (machine, version, step, module) kinds it holds; the few steps that carry
 * more (a key, an inbox, children, a failure to hand to `onError`) carry those fields as an
 * object beside it. Results go back the same way: a `done` or a `next` with nothing else to
 * it is a few string lengths, any other result travels as the object it is. Measured in a
 * drain of no-op jobs at concurrency 64: ~1 µs less of the main thread per step.
 */
import type { StepFailure } from '../runtime/machine.js';
import type { StepResult } from '../runtime/executor.js';
import type { Mutable } from '../runtime/mutable.js';
import type { StepItem } from './protocol.js';

/** The fields of a step that most steps leave at their default, for the steps that do not. */
interface ItemExtras {
  readonly correlationKey: string | null;
  readonly inbox: string | null;
  readonly awaiting: readonly string[] | null;
  readonly timedOut: boolean;
  readonly children: string | null;
  readonly failure?: StepFailure;
}

/** A batch of steps as sent to a worker (`encodeItems`, `decodeItems`). */
export interface WireItems {
  readonly count: number;
  /** Each step's id, then its state (JSON text), step after step. */
  readonly text: string;
  /** `ITEM_INTS` per step: id length, state length, kind, attempt, max attempts. */
  readonly ints: Int32Array;
  /** The distinct `[machine, version, step, module]` of the batch, named by index in `ints`. */
  readonly kinds: ReadonlyArray<readonly [string, number, string, string]>;
  /** `[index, fields]` of the steps whose `ItemExtras` are not all defaults. */
  readonly extras: ReadonlyArray<readonly [number, ItemExtras]>;
}

const ITEM_INTS = 5;

function hasExtras(item: StepItem): boolean {
  return (
    item.correlationKey !== null ||
    item.inbox !== null ||
    item.awaiting !== null ||
    item.timedOut ||
    item.children !== null ||
    item.failure !== undefined
  );
}

export function encodeItems(items: readonly StepItem[]): WireItems {
  const ints = new Int32Array(items.length * ITEM_INTS);
  const kinds: Array<readonly [string, number, string, string]> = [];
  const kindIndex = new Map<string, number>();
  const extras: Array<readonly [number, ItemExtras]> = [];
  let text = '';
  for (let i = 0; i < items.length; i++) {
    const item = items[i]!;
    const key = `${item.machine}\u0000${item.version}\u0000${item.step}\u0000${item.module}`;
    let kind = kindIndex.get(key);
    if (kind === undefined) {
      kind = kinds.length;
      kinds.push([item.machine, item.version, item.step, item.module]);
      kindIndex.set(key, kind);
    }
    text += item.id;
    text += item.state;
    const at = i * ITEM_INTS;
    ints[at] = item.id.length;
    ints[at + 1] = item.state.length;
    ints[at + 2] = kind;
    ints[at + 3] = item.attempt;
    ints[at + 4] = item.maxAttempts;
    if (hasExtras(item)) {
      const { correlationKey, inbox, awaiting, timedOut, children, failure } = item;
      extras.push([
        i,
        failure === undefined
          ? { correlationKey, inbox, awaiting, timedOut, children }
          : { correlationKey, inbox, awaiting, timedOut, children, failure },
      ]);
    }
  }
  return { count: items.length, text, ints, kinds, extras };
}

export function decodeItems(wire: WireItems): StepItem[] {
  const { text, ints, kinds } = wire;
  const items = new Array<StepItem>(wire.count);
  const extras = new Map(wire.extras);
  let offset = 0;
  for (let i = 0; i < wire.count; i++) {
    const at = i * ITEM_INTS;
    const idEnd = offset + ints[at]!;
    const stateEnd = idEnd + ints[at + 1]!;
    const [machine, version, step, module] = kinds[ints[at + 2]!]!;
    const extra = extras.get(i);
    const item: StepItem = {
      id: text.slice(offset, idEnd),
      machine,
      version,
      step,
      state: text.slice(idEnd, stateEnd),
      attempt: ints[at + 3]!,
      maxAttempts: ints[at + 4]!,
      correlationKey: extra?.correlationKey ?? null,
      inbox: extra?.inbox ?? null,
      awaiting: extra?.awaiting ?? null,
      timedOut: extra?.timedOut ?? false,
      children: extra?.children ?? null,
      module,
    };
    items[i] = extra?.failure === undefined ? item : { ...item, failure: extra.failure };
    offset = stateEnd;
  }
  return items;
}

/** Results as sent back to the main thread (`encodeResults`, `decodeResults`). */
export interface WireResults {
  /** Of each plain result: its id, then its result (`done`) or its step and state (`next`). */
  readonly text: string;
  /** `RESULT_INTS` per plain result: its form (`DONE`, `NEXT`…), id length, first and second text length. */
  readonly ints: Int32Array;
  /** Every other result, as the object it is. */
  readonly others: readonly StepResult[];
}

const RESULT_INTS = 4;

/**
 * The form of a plain result: `DONE`, or a `next` (`NEXT`) with bits for what else it has:
 * an empty `consumed` list, an `inline` flag and its value.
 */
const DONE = 0;
const NEXT = 1;
const CONSUMED_NONE = 2;
const HAS_INLINE = 4;
const INLINE = 8;

/**
 * The plain form of `r` (a `done`, or an undelayed `next` that consumes no signal and sets no
 * key or rate limit, with no error or effects), or -1 when it carries anything more.
 */
function plainForm(r: StepResult): number {
  if (r.error !== undefined || r.errorDetail !== undefined || r.effects !== undefined) return -1;
  if (r.kind === 'done') return DONE;
  if (r.kind !== 'next' || r.delayMs !== 0 || r.concurrencyKey !== undefined || r.rate !== undefined)
    return -1;
  let form = NEXT;
  if (r.consumed !== undefined) {
    if (r.consumed.length > 0) return -1;
    form |= CONSUMED_NONE;
  }
  if (r.inline !== undefined) form |= r.inline ? HAS_INLINE | INLINE : HAS_INLINE;
  return form;
}

const NO_SIGNALS: readonly string[] = Object.freeze([]);

export function encodeResults(results: readonly StepResult[]): WireResults {
  const forms = results.map(plainForm);
  const plain = forms.reduce((n, f) => (f < 0 ? n : n + 1), 0);
  const ints = new Int32Array(plain * RESULT_INTS);
  const others: StepResult[] = [];
  let text = '';
  let at = 0;
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    const form = forms[i]!;
    if (form < 0) {
      others.push(r);
      continue;
    }
    ints[at] = form;
    ints[at + 1] = r.id.length;
    text += r.id;
    if (r.kind === 'done') {
      ints[at + 2] = r.result.length;
      text += r.result;
    } else if (r.kind === 'next') {
      ints[at + 2] = r.step.length;
      ints[at + 3] = r.state.length;
      text += r.step;
      text += r.state;
    }
    at += RESULT_INTS;
  }
  return { text, ints, others };
}

/** Calls `each` with every result of `wire`, the plain ones first. */
export function decodeResults(wire: WireResults, each: (result: StepResult) => void): void {
  const { text, ints } = wire;
  let offset = 0;
  for (let at = 0; at < ints.length; at += RESULT_INTS) {
    const form = ints[at]!;
    const idEnd = offset + ints[at + 1]!;
    const firstEnd = idEnd + ints[at + 2]!;
    const id = text.slice(offset, idEnd);
    if (form === DONE) {
      each({ id, kind: 'done', result: text.slice(idEnd, firstEnd) });
      offset = firstEnd;
      continue;
    }
    const secondEnd = firstEnd + ints[at + 3]!;
    const result: Mutable<Extract<StepResult, { kind: 'next' }>> = {
      id,
      kind: 'next',
      step: text.slice(idEnd, firstEnd),
      state: text.slice(firstEnd, secondEnd),
      delayMs: 0,
    };
    if (form & CONSUMED_NONE) result.consumed = NO_SIGNALS;
    if (form & HAS_INLINE) result.inline = (form & INLINE) !== 0;
    offset = secondEnd;
    each(result);
  }
  for (const r of wire.others) each(r);
}
