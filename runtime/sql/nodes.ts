/** Statements of node membership (`gen_durable_nodes`). */
import { type Queryable, run, statement } from './db.js';

export async function registerNode(
  db: Queryable,
  schema: string,
  node: { id: string; host: string; pid: number; queues: readonly string[] },
): Promise<void> {
  const stmt = statement(
    schema,
    'register_node',
    `INSERT INTO :schema.gen_durable_nodes (id, host, pid, queues) VALUES ($1, $2, $3, $4)
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), queues = EXCLUDED.queues`,
  );
  await run(db, stmt, [node.id, node.host, node.pid, node.queues]);
}

export async function deregisterNode(db: Queryable, schema: string, nodeId: string): Promise<void> {
  const stmt = statement(schema, 'deregister_node', `DELETE FROM :schema.gen_durable_nodes WHERE id = $1`);
  await run(db, stmt, [nodeId]);
}

/** The registered nodes, by id, with their last heartbeat. */
export async function listNodes(
  db: Queryable,
  schema: string,
): Promise<Array<{ id: string; host: string; pid: number; queues: string[]; heartbeat_at: Date }>> {
  const stmt = statement(
    schema,
    'list_nodes',
    `SELECT id, host, pid, queues, heartbeat_at FROM :schema.gen_durable_nodes ORDER BY id`,
  );
  return run(db, stmt, []);
}

/**
 * Deletes the rows of nodes whose heartbeat is older than `olderThanMs` (they died without
 * deregistering). A node that was only frozen registers again at its next heartbeat.
 */
export async function pruneDeadNodes(db: Queryable, schema: string, olderThanMs: number): Promise<string[]> {
  const stmt = statement(
    schema,
    'prune_nodes',
    `DELETE FROM :schema.gen_durable_nodes WHERE heartbeat_at < now() - $1 * interval '1 millisecond'
     RETURNING id`,
  );
  return (await run<{ id: string }>(db, stmt, [olderThanMs])).map((r) => r.id);
}
