/**
 * `gen-durable demo`: runs a node on a real Postgres (DATABASE_URL, else an embedded one),
 * pushes an order workload through it with a progress bar, and prints a summary. SIGINT
 * (Ctrl-C) or SIGTERM drains the node (`shutdownOnSignals`), then cleans up as a finished
 * run does (the schema dropped, the embedded Postgres stopped) and exits with 130; a second
 * signal exits at once.
 */
import { Cluster, shutdownOnSignals } from '../index.js';
import { startEmbeddedPostgres } from './embedded-postgres.js';
import { order, receipt } from './demo/machines.js';
import { dropSchema } from '../runtime/sql/schema.js';

/** Resolves true when the run finished, false when a signal interrupted it. */
export async function demo(args: { orders: number; databaseUrl?: string }): Promise<boolean> {
  const embedded = args.databaseUrl ? undefined : await startEmbeddedPostgres();
  const connectionString = args.databaseUrl ?? embedded!.url;
  const schema = `demo_${Date.now().toString(36)}`;
  console.log(
    `database: ${embedded ? 'embedded Postgres' : args.databaseUrl}; schema ${schema} (dropped afterwards)`,
  );
  const node = await Cluster.join({
    connectionString,
    schema,
    machines: [order, receipt],
    queues: { orders: { concurrency: 50, threads: 2 }, mail: { concurrency: 20, threads: 1 } },
  });
  let interrupted = false;
  let removeHandlers = (): void => undefined;
  const drained = new Promise<void>((resolve) => {
    removeHandlers = shutdownOnSignals(node, {
      timeout: 5_000,
      exit: false,
      onDrained: () => {
        interrupted = true;
        resolve();
      },
    });
  });
  const sleep = (ms: number) => Promise.race([drained, new Promise((r) => setTimeout(r, ms).unref())]);
  try {
    const started = Date.now();
    await node.client.insertAll(
      Array.from({ length: args.orders }, (_, i) => ({
        machine: order,
        state: { order: i, amount: 10 + (i % 90) },
      })),
    );
    await node.client.insertAll(
      Array.from({ length: args.orders }, (_, i) => ({ machine: receipt, args: { order: i } })),
    );
    const total = args.orders * 2;
    for (;;) {
      // Draining after a signal: the node's client closes, so wait for the drain to end.
      const counts = await node.client.count().catch(async (error: unknown) => {
        await Promise.race([drained, sleep(1_000)]);
        if (interrupted) return undefined;
        throw error;
      });
      if (counts === undefined || interrupted) break;
      const finished = counts
        .filter((c) => c.status === 'done' || c.status === 'failed')
        .reduce((a, c) => a + c.count, 0);
      const width = 40;
      const filled = Math.round((finished / total) * width);
      process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${finished}/${total}`);
      if (finished >= total) break;
      await sleep(200);
    }
    const seconds = (Date.now() - started) / 1000;
    process.stderr.write('\n');
    if (interrupted) {
      console.log('interrupted: the node drained; cleaning up');
      return false;
    }
    const counts = await node.client.count();
    console.log('summary:');
    for (const c of counts)
      console.log(`  ${c.queue.padEnd(8)} ${c.machine.padEnd(14)} ${c.status.padEnd(8)} ${c.count}`);
    console.log(`  ${total} instances in ${seconds.toFixed(2)}s (${Math.round(total / seconds)}/s)`);
    return true;
  } finally {
    removeHandlers();
    await node.stop({ timeout: 5_000 });
    if (!embedded) await dropSchema(connectionString, schema);
    await embedded?.stop();
  }
}
