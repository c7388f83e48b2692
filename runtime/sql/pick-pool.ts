/**
 * The connections a node's plain pick runs on: a pool of their own, whose sessions take the
 * pick's generic plan (`plan_cache_mode = force_generic_plan`) instead of planning it anew
 * with its values at every execution.
 *
 * Left to choose, Postgres never takes the pick's generic plan: it estimates `LIMIT $2` at a
 * tenth of the rows and the machines filter (`$5 IS NULL OR ...`) as selective, so the
 * generic plan always looks costlier than the plans made with the values, and every pick is
 * planned again: ~0.3–0.4 ms for a statement that runs in ~0.6 ms for 40 rows. The generic
 * plan is the same index-driven plan (`test/size-classed-plans.test.ts` checks it on a large
 * table), and the pick is prepared by the table's size class, so a plan made while the table
 * was small never serves one more than twice its size (`table-size.ts`). Measured on one
 * connection, a pick and a flush of 100 rows at a time among 100,000 runnable rows: ~18% less
 * Postgres CPU for the pair (four runs each in turns).
 *
 * No other statement runs here: the guarded pick's generic plan is slow (its admission is
 * planned with its values), and the node's other statements keep Postgres's own choice.
 */
import type pg from 'pg';
import { loadPg } from '../pg.js';
import type { Queryable } from './db.js';

const PICK_SESSION_SETUP = 'SET plan_cache_mode = force_generic_plan';

/**
 * A pool for the pick, connecting as `options` say (the node's pool's options, with their
 * own `application_name` and size). Each connection is set up by its first use, before the
 * statement it was taken for; a server that refuses the setting (before Postgres 12) still
 * runs the pick, planned as anywhere else.
 */
export class PickPool implements Queryable {
  readonly #pool: pg.Pool;
  readonly #setUp = new WeakSet<pg.PoolClient>();

  constructor(options: pg.PoolConfig, onError: (error: Error) => void) {
    this.#pool = new (loadPg().Pool)(options);
    this.#pool.on('error', onError);
  }

  /** As `pg.Pool.query`: a connection whose statement failed is discarded, not reused. */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(config: {
    name?: string;
    text: string;
    values?: unknown[];
  }): Promise<pg.QueryResult<R>> {
    const client = await this.#pool.connect();
    let failed: Error | undefined;
    // A checked-out client emits its connection's errors (a server restart) as well as
    // failing the query: heard here, as `pg.Pool.query` does, or they would be uncaught.
    const onError = (error: Error): void => {
      failed ??= error;
    };
    client.on('error', onError);
    try {
      if (!this.#setUp.has(client)) {
        await client.query(PICK_SESSION_SETUP).catch(() => undefined);
        this.#setUp.add(client);
      }
      return await client.query<R>(config);
    } catch (error) {
      failed = error instanceof Error ? error : new Error(String(error));
      throw error;
    } finally {
      client.off('error', onError);
      client.release(failed);
    }
  }

  end(): Promise<void> {
    return this.#pool.end();
  }
}
