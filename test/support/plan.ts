/** Reading `EXPLAIN (ANALYZE, FORMAT JSON)` plans in tests of the hot statements. */

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
