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
  | 'migration_failed';

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
