/**
 * Validation of a signal (`client.signal`, `ctx.signal`) before anything is written: the
 * target (an id, `{ key }` or an insert result), the name, the payload (JSON) and the
 * options. Keys, names and payloads are stored as given, whatever characters they hold.
 */
import { z } from 'zod';
import { ValidationError, parseInput } from './errors.js';
import type { SignalRequest } from './executor.js';
import { correlationKeySchema } from './insert-options.js';
import { isInstanceId } from './instance.js';
import { badText, findNonJson, toJson } from './json.js';

const storable = (max: number) =>
  z
    .string()
    .min(1)
    .max(max)
    .refine((t) => badText(t) === null, 'must not contain U+0000 or lone surrogates');

export const signalNameSchema = storable(200);

const signalOptionsSchema = z.object({ dedupKey: correlationKeySchema.optional() }).strict();

/** The target as `{ id }` or `{ key }`; `path` names the field in errors. */
export function parseTarget(target: unknown, path = 'target'): { id: string | null; key: string | null } {
  const o =
    typeof target === 'object' && target !== null ? (target as { key?: unknown; id?: unknown }) : undefined;
  const id =
    typeof target === 'string' ? target : o && !('key' in o) && typeof o.id === 'string' ? o.id : undefined;
  if (id !== undefined) {
    if (!isInstanceId(id)) throw new ValidationError('invalid_input', path, `"${id}" is not an instance id`);
    return { id, key: null };
  }
  if (o && typeof o.key === 'string' && o.key.length > 0) {
    const bad = badText(o.key);
    if (bad) throw new ValidationError('invalid_input', `${path}.key`, bad);
    return { id: null, key: o.key };
  }
  throw new ValidationError('invalid_input', path, 'must be an instance id, { key } or an insert result');
}

/** Validates one signal into the request the SQL delivers; `path` prefixes field names. */
export function toSignalRequest(
  target: unknown,
  name: unknown,
  payload: unknown,
  options: unknown,
  path = '',
): SignalRequest {
  const t = parseTarget(target, `${path}target`);
  const n = parseInput(signalNameSchema, name, `${path}name`);
  const bad = findNonJson(payload, `${path}payload`);
  if (bad) throw new ValidationError('not_serializable', bad.path, bad.reason);
  const o = parseInput(signalOptionsSchema, options ?? {}, `${path}options`);
  return {
    targetId: t.id,
    targetKey: t.key,
    name: n,
    payload: toJson(payload),
    dedupKey: o.dedupKey ?? null,
  };
}
