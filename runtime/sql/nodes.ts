/** Statements of node membership (`gen_durable_nodes`). */
import { type Queryable, run, statement } from './db.js';

export async function registerNode(
  db: Queryable,
  schema: string,
  node: {
    id: string;
    host: string;
    pid: number;
    queues: readonly string[];
    /** `name@version` of the machines it can run; null when it may run any (a resolve hook). */
    machines?: readonly string[] | null;
    /** The rate limits it declares (`rateLimits`). */
    rateLimits?: readonly string[];
  },
): Promise<void> {
  const stmt = statement(
    schema,
    'register_node',
    `INSERT INTO :schema.gen_durable_nodes (id, host, pid, queues, machines, serves_any, rate_limits)
     VALUES ($1, $2, $3, $4, COALESCE($5::text[], '{}'), $5::text[] IS NULL, $6)
     ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), queues = EXCLUDED.queues,
       machines = EXCLUDED.machines, serves_any = EXCLUDED.serves_any, rate_limits = EXCLUDED.rate_limits`,
  );
  await run(db, stmt, [
    node.id,
    node.host,
    node.pid,
    node.queues,
    node.machines ?? [],
    node.rateLimits ?? [],
  ]);
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

/** The queues that registered nodes run (the stager's sweep looks up each one's next due time). */
export async function listNodeQueues(db: Queryable, schema: string): Promise<string[]> {
  const stmt = statement(
    schema,
    'node_queues',
    `SELECT DISTINCT q AS queue FROM :schema.gen_durable_nodes, unnest(queues) AS q ORDER BY 1`,
  );
  return (await run<{ queue: string }>(db, stmt, [])).map((r) => r.queue);
}

/**
 * Live work no live node can serve: runnable or executing rows whose queue no node (whose
 * heartbeat is within `aliveWithinMs`) runs, or whose machine and version none of the nodes
 * running that queue knows. Counted by queue and machine, for operators (`status`). Scans
 * the live rows: an operator's query, not a hot one.
 */
export async function countUnservedWork(
  db: Queryable,
  schema: string,
  aliveWithinMs: number,
): Promise<Array<{ queue: string; fsm: string; version: number; count: number; reason: string }>> {
  const stmt = statement(
    schema,
    'unserved',
    `WITH live AS (
       SELECT queues, machines, serves_any FROM :schema.gen_durable_nodes
       WHERE heartbeat_at > now() - $1 * interval '1 millisecond'
     )
     SELECT g.queue, g.fsm, g.version, count(*)::int AS count,
            CASE WHEN NOT EXISTS (SELECT 1 FROM live WHERE g.queue = ANY (live.queues))
                 THEN 'no live node runs this queue'
                 ELSE 'no live node running this queue knows this machine version' END AS reason
     FROM :schema.gen_durable g
     WHERE g.status = 'runnable'
       AND NOT EXISTS (
         SELECT 1 FROM live
         WHERE g.queue = ANY (live.queues)
           AND (live.serves_any OR (g.fsm || '@' || g.version) = ANY (live.machines)))
     GROUP BY g.queue, g.fsm, g.version
     ORDER BY g.queue, g.fsm, g.version`,
  );
  return run(db, stmt, [aliveWithinMs]);
}
