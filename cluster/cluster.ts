/** `Cluster.join(options)`: embeds a node of the cluster in this process. */
import { GenDurableError } from '../runtime/errors.js';
import { GenDurableNode } from './node.js';
import { type JoinOptions, parseJoinOptions } from './options.js';

const WORKER_THREAD = Symbol.for('gen-durable.worker-thread');

/** Whether this code runs in one of gen-durable's own worker threads. */
export function inWorkerThread(): boolean {
  return (globalThis as Record<symbol, unknown>)[WORKER_THREAD] === true;
}

export const Cluster = {
  /**
   * Validates the options, migrates the schema (unless `migrate: false`), registers the node
   * and starts its feeders, thread pools and services.
   */
  async join(options: JoinOptions): Promise<GenDurableNode> {
    if (inWorkerThread()) {
      throw new GenDurableError(
        'join_in_worker',
        'Cluster.join() was called inside a gen-durable worker thread: a worker imports the ' +
          'module that defines a machine to run its steps, and that module joins a node at its ' +
          'top level. Keep machines in their own module and join from another (your host), or ' +
          'guard the join (e.g. `if (isMainThread)` from node:worker_threads).',
      );
    }
    const node = new GenDurableNode(parseJoinOptions(options));
    await node.start();
    return node;
  },
};
