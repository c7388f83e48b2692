/**
 * Typed errors. Every error the library throws at a caller is a `GenDurableError` with a
 * stable `code`; input errors name the offending field in `path`.
 */
import type { z } from 'zod';

export type ErrorCode =
  | 'invalid_input'
  | 'invalid_state'
  | 'unknown_machine'
  | 'unknown_step'
  | 'not_serializable'
  | 'invalid_outcome'
  | 'closed'
  | 'insert_conflict'
  | 'not_found'
  | 'unavailable'
  | 'migration_failed'
  | 'join_in_worker';

export class GenDurableError extends Error {
  override readonly name: string = 'GenDurableError';
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Bad input to a public entry point, detected before anything touches the database. */
export class ValidationError extends GenDurableError {
  override readonly name = 'ValidationError';
  /** Dotted path of the offending field, e.g. `state.order` or `queues.checkout.threads`. */
  readonly path: string;

  constructor(code: ErrorCode, path: string, message: string, options?: { cause?: unknown }) {
    super(code, path ? `${path}: ${message}` : message, options);
    this.path = path;
  }
}

/** Formats zod issues as `a.b: message; c: message`, prefixed by the field they live under. */
export function describeZodIssues(
  prefix: string,
  issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }>,
): { path: string; message: string } {
  const parts = issues.map((issue) => {
    const path = joinPath(prefix, issue.path);
    return { path, message: issue.message };
  });
  const first = parts[0] ?? { path: prefix, message: 'invalid' };
  return {
    path: first.path,
    message: parts.map((p) => (p.path === first.path ? p.message : `${p.path}: ${p.message}`)).join('; '),
  };
}

/**
 * Parses `value` with a zod schema, or throws a `ValidationError` naming the first bad field
 * (prefixed by `prefix`, e.g. `items[2].state`). `context` prefixes the message.
 */
export function parseInput<T extends z.ZodType>(
  schema: T,
  value: unknown,
  prefix: string,
  code: ErrorCode = 'invalid_input',
  context?: string,
): z.output<T> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const { path, message } = describeZodIssues(prefix, parsed.error.issues);
  throw new ValidationError(code, path, context ? `${context}: ${message}` : message);
}

export function joinPath(prefix: string, path: ReadonlyArray<PropertyKey>): string {
  let out = prefix;
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out ? `.${String(key)}` : String(key);
  }
  return out;
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return typeof error === 'string' ? error : JSON.stringify(error);
  } catch {
    return String(error);
  }
}

/** Longest error message kept on a row (`last_error`, each history entry), in characters. */
export const MAX_ERROR_MESSAGE = 4_000;
/** Longest stack kept in an error history entry, in characters. */
export const MAX_ERROR_STACK = 4_000;

/** `text` cut to `max` characters, saying how much was cut (never splits a surrogate pair). */
export function boundText(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = Math.max(0, max - 40);
  const code = text.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--;
  return `${text.slice(0, end)}… [${text.length - end} more characters]`;
}

/** What an error history entry keeps of an error besides its message. */
export interface ErrorDetail {
  readonly name?: string;
  readonly code?: string;
  readonly stack?: string;
}

/** The name, code and (bounded) stack of a thrown value, as far as it has them. */
export function errorDetail(error: unknown): ErrorDetail {
  if (typeof error !== 'object' || error === null) return {};
  const e = error as { name?: unknown; code?: unknown; stack?: unknown };
  const detail: { name?: string; code?: string; stack?: string } = {};
  if (typeof e.name === 'string' && e.name) detail.name = boundText(e.name, 200);
  if ((typeof e.code === 'string' && e.code) || typeof e.code === 'number')
    detail.code = boundText(String(e.code), 200);
  if (typeof e.stack === 'string' && e.stack) detail.stack = boundText(e.stack, MAX_ERROR_STACK);
  return detail;
}
