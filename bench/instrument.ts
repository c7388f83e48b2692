/**
 * Statement timing for the bench: wraps `query` of one `pg.Pool` instance (the pool the bench
 * hands to `Cluster.join`) and accumulates, per engine statement, how many ran, how long they
 * took from the caller's point of view (queueing for a connection included) and how many rows
 * they returned. The engine's statements are named `gd_<kind>_<hash>`; they are keyed by kind.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';

export interface StatementStats {
  count: number;
  totalMs: number;
  maxMs: number;
  rows: number;
  failed: number;
}

type QueryFn = (config: unknown, values?: unknown, callback?: unknown) => unknown;

function kindOf(config: unknown): string {
  if (typeof config === 'object' && config !== null) {
    const { name, text } = config as { name?: unknown; text?: unknown };
    if (typeof name === 'string') return /^gd_(.+)_[0-9a-f]{12}$/.exec(name)?.[1] ?? name;
    if (typeof text === 'string') return text.trim().split(/\s+/, 2).join(' ');
  }
  return typeof config === 'string' ? config.trim().split(/\s+/, 2).join(' ') : 'other';
}

/** Starts timing `pool.query`; read the returned map at any time. */
export function instrumentPool(pool: pg.Pool): Map<string, StatementStats> {
  const stats = new Map<string, StatementStats>();
  const original = (pool.query as QueryFn).bind(pool);
  const timed: QueryFn = (config, values, callback) => {
    if (typeof values === 'function' || typeof callback === 'function')
      return original(config, values, callback);
    const kind = kindOf(config);
    const started = performance.now();
    const record = (rows: number, failed: boolean): void => {
      const elapsed = performance.now() - started;
      let s = stats.get(kind);
      if (!s) stats.set(kind, (s = { count: 0, totalMs: 0, maxMs: 0, rows: 0, failed: 0 }));
      s.count++;
      s.totalMs += elapsed;
      s.maxMs = Math.max(s.maxMs, elapsed);
      s.rows += rows;
      if (failed) s.failed++;
    };
    const promise = original(config, values) as Promise<pg.QueryResult>;
    void promise.then(
      (r) => record(r.rowCount ?? r.rows.length, false),
      () => record(0, true),
    );
    return promise;
  };
  (pool as unknown as { query: QueryFn }).query = timed;
  return stats;
}
