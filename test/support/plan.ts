/** Reading `EXPLAIN (ANALYZE, FORMAT JSON)` plans in tests of the hot statements. */
import type pg from 'pg';

/** One node of a JSON plan (the fields the tests read). */
export interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  'Index Cond'?: string;
  'Actual Rows'?: number;
  'Actual Loops'?: number;
  'Rows Removed by Filter'?: number;
  'Rows Removed by Join Filter'?: number;
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  Plans?: PlanNode[];
}

/** The node and every node below it, depth first. */
export function planNodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(planNodes)];
}

/** Rows the plan's filters and join filters looked at and dropped. */
export function removedBy(nodes: readonly PlanNode[]): number {
  return nodes.reduce(
    (sum, n) => sum + (n['Rows Removed by Filter'] ?? 0) + (n['Rows Removed by Join Filter'] ?? 0),
    0,
  );
}

/**
 * `EXPLAIN (ANALYZE, BUFFERS)` of `text` with `values` in a transaction that is rolled back
 * (the table is left as it was): the plan's nodes, and what `inside` read before the rollback.
 */
export async function explainRolledBack<R = undefined>(
  pool: pg.Pool,
  text: string,
  values: readonly unknown[],
  inside?: (client: pg.PoolClient) => Promise<R>,
): Promise<{ plan: PlanNode[]; seen: R | undefined }> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const { rows } = await client.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${text}`,
      [...values],
    );
    const seen = inside ? await inside(client) : undefined;
    return { plan: planNodes(rows[0]!['QUERY PLAN'][0]!.Plan), seen };
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}
