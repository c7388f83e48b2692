/**
 * The `pg` module, loaded on first use rather than when the package is imported.
 *
 * A machine module imports the package (for `defineMachine`, `next`, …), and every worker
 * thread imports the machine modules; none of them ever connects. Loading `pg` costs a thread
 * ~50 ms of CPU on Node 20 (most of it Node's `fetch` implementation, which `pg` pulls in by
 * looking for `navigator`), several times that while other threads start too. Only the code
 * that connects (the node, the client, `migrate`) loads it.
 */
import { createRequire } from 'node:module';
import type Pg from 'pg';

const require = createRequire(import.meta.url);
let loaded: typeof Pg | undefined;

/** `pg`, loaded now if it was not yet. */
export function loadPg(): typeof Pg {
  loaded ??= require('pg') as typeof Pg;
  return loaded;
}

/**
 * `pg` if this process has loaded it (here or elsewhere), else undefined: for checks such as
 * `instanceof pg.DatabaseError`, which no value can pass before `pg` is loaded.
 */
export function loadedPg(): typeof Pg | undefined {
  if (loaded) return loaded;
  return require.cache[require.resolve('pg')] ? loadPg() : undefined;
}
