/**
 * `T` with its fields writable: for objects built field by field on the per-step path, where
 * an object spread (conditional, or with fields overridden) costs V8 microseconds per object.
 */
export type Mutable<T> = { -readonly [K in keyof T]: T[K] };
