/**
 * Which zod schemas a definition accepts: zod 4 schemas, from any copy of zod (the user's
 * own install may differ from ours, so `instanceof` is not the test) — including the v4
 * schemas zod 3.25 ships under `zod/v4`. zod 3's classic schemas are refused, saying what to
 * use instead.
 */
import { z } from 'zod';

/** What the engine calls on a state or args schema. */
export interface ZodLike {
  safeParse(value: unknown):
    | { readonly success: true; readonly data: unknown }
    | {
        readonly success: false;
        readonly error: { readonly issues: ReadonlyArray<{ path: PropertyKey[]; message: string }> };
      };
}

/** Whether `value` is a zod 4 schema (from this zod or another copy). */
export function isZod4Schema(value: unknown): value is z.ZodType {
  if (value instanceof z.ZodType) return true;
  if (typeof value !== 'object' || value === null) return false;
  const v = value as { _zod?: unknown; safeParse?: unknown };
  return typeof v._zod === 'object' && v._zod !== null && typeof v.safeParse === 'function';
}

/** Why `value` is not a schema gen-durable can use, or null when it is one. */
export function zodSchemaProblem(value: unknown): string | null {
  if (isZod4Schema(value)) return null;
  const v = value as { _def?: unknown; safeParse?: unknown } | null;
  if (typeof v === 'object' && v !== null && v._def !== undefined && typeof v.safeParse === 'function') {
    return (
      'is a zod 3 schema; gen-durable needs zod 4 schemas: install zod@^4, or with zod 3.25 ' +
      "import { z } from 'zod/v4'"
    );
  }
  return "must be a zod 4 schema (import { z } from 'zod')";
}

/** A zod field for definitions: a schema, with `zodSchemaProblem`'s message otherwise. */
export function zodSchemaField(): z.ZodType<z.ZodType> {
  return z.unknown().superRefine((v, ctx) => {
    const problem = zodSchemaProblem(v);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }) as unknown as z.ZodType<z.ZodType>;
}

/**
 * A state or args schema as the types see it: any zod 4 schema, whichever copy of zod it
 * comes from (the types are matched by shape, as the values are at run time).
 */
export interface StateSchema<O = unknown, I = unknown> {
  readonly _zod: { readonly output: O; readonly input: I };
}

/** What a schema accepts (`z.input`), by shape. */
export type SchemaInput<S> = S extends { readonly _zod: { readonly input: infer I } } ? I : never;
/** What a schema produces (`z.output`), by shape. */
export type SchemaOutput<S> = S extends { readonly _zod: { readonly output: infer O } } ? O : never;
