/** `Cluster.join(options)`: embeds a node of the cluster in this process. */
import { GenDurableNode } from './node.js';
import { type JoinOptions, parseJoinOptions } from './options.js';

export const Cluster = {
  /**
   * Validates the options, migrates the schema (unless `migrate: false`), registers the node
   * and starts its feeders, thread pools and services.
   */
  async join(options: JoinOptions): Promise<GenDurableNode> {
    const node = new GenDurableNode(parseJoinOptions(options));
    await node.start();
    return node;
  },
};
