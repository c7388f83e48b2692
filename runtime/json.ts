/**
 * JSON checks for values that are stored as `jsonb`: functions, symbols, BigInt, cycles,
 * non-finite numbers and class instances that JSON would silently mangle, and text Postgres
 * cannot store (U+0000, lone surrogates), are rejected with the path of the first offender.
 */

/** Returns the dotted path and reason of the first non-JSON value, or null when `value` is JSON. */
export function findNonJson(value: unknown, path = ''): { path: string; reason: string } | null {
  const seen = new Set<object>();
  const visit = (v: unknown, p: string): { path: string; reason: string } | null => {
    switch (typeof v) {
      case 'string': {
        const bad = badText(v);
        return bad ? { path: p, reason: bad } : null;
      }
      case 'boolean':
        return null;
      case 'number':
        return Number.isFinite(v) ? null : { path: p, reason: `${v} is not a JSON number` };
      case 'bigint':
        return { path: p, reason: 'a BigInt is not JSON (use a string or number)' };
      case 'function':
        return { path: p, reason: 'a function is not JSON' };
      case 'symbol':
        return { path: p, reason: 'a symbol is not JSON' };
      case 'undefined':
        return null; // dropped by JSON in objects; callers decide about top-level undefined
      case 'object': {
        if (v === null) return null;
        if (seen.has(v)) return { path: p, reason: 'a cycle is not JSON' };
        if (v instanceof Date) return null; // serialises to an ISO string
        seen.add(v);
        if (Array.isArray(v)) {
          for (let i = 0; i < v.length; i++) {
            const bad = visit(v[i], `${p}[${i}]`);
            if (bad) return bad;
          }
        } else {
          const proto: unknown = Object.getPrototypeOf(v);
          if (proto !== Object.prototype && proto !== null) {
            const ctor = (v as { constructor?: { name?: string } }).constructor?.name ?? 'object';
            return { path: p, reason: `a ${ctor} instance is not plain JSON` };
          }
          for (const [key, child] of Object.entries(v)) {
            const badKey = badText(key);
            if (badKey) return { path: p ? `${p}.${key}` : key, reason: `the key ${badKey}` };
            const bad = visit(child, p ? `${p}.${key}` : key);
            if (bad) return bad;
          }
        }
        seen.delete(v);
        return null;
      }
    }
  };
  return visit(value, path);
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Why Postgres cannot store this text (in `text` or `jsonb`), or null when it can. */
export function badText(text: string): string | null {
  if (text.includes('\u0000')) return 'contains U+0000, which Postgres cannot store';
  if (LONE_SURROGATE.test(text)) return 'contains a lone UTF-16 surrogate, which is not valid Unicode';
  return null;
}

/** Makes free text (error messages, reasons) storable: U+0000 and lone surrogates become U+FFFD. */
export function storableText(text: string): string {
  return badText(text) === null
    ? text
    : text.replaceAll('\u0000', '\ufffd').replace(new RegExp(LONE_SURROGATE.source, 'g'), '\ufffd');
}

/** Stringifies a value known to be JSON; `undefined` becomes `null`. */
export function toJson(value: unknown): string {
  return value === undefined ? 'null' : JSON.stringify(value);
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFunction = (...args: any[]) => unknown;
type Dropped = undefined | symbol | AnyFunction;

/**
 * The static type of a value after a JSON round trip (how a result is read back): `toJSON`
 * applied (a `Date` becomes a string), properties that are `undefined`, functions or symbols
 * dropped (a possibly-undefined property becomes optional), such array elements `null`.
 * `unknown` and `any` stay as they are.
 */
export type Jsonified<T> = 0 extends 1 & T
  ? T
  : unknown extends T
    ? T
    : T extends string | number | boolean | null
      ? T
      : T extends { toJSON(...args: never[]): infer J }
        ? Jsonified<J>
        : T extends Dropped | bigint
          ? never
          : T extends readonly unknown[]
            ? { -readonly [I in keyof T]: T[I] extends Dropped ? null : Jsonified<T[I]> }
            : T extends object
              ? JsonifiedObject<T>
              : T;

type JsonifiedObject<T> = {
  [
    P in keyof T as P extends symbol
      ? never
      : T[P] extends Dropped
        ? never
        : undefined extends T[P]
          ? never
          : P
  ]: Jsonified<T[P]>;
} & {
  [
    P in keyof T as P extends symbol
      ? never
      : T[P] extends Dropped
        ? never
        : undefined extends T[P]
          ? P
          : never
  ]?: Jsonified<Exclude<T[P], Dropped>>;
} extends infer O
  ? { [P in keyof O]: O[P] }
  : never;
