/** Starting nodes and clients for tests, always stopped after the test. */
import { afterEach } from 'vitest';
import { Cluster, type GenDurableNode, type JoinOptions, createClient, type Client } from '../../index.js';
import type { TestDb } from './db.js';

export function useNodes(db: TestDb): {
  join: (options: Partial<JoinOptions>) => Promise<GenDurableNode>;
  client: () => Client;
} {
  const open: Array<{ stop: () => Promise<void> }> = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((r) => r.stop()));
  });
  return {
    join: async (options) => {
      // No safety-net poll in tests: a wake-up that never arrives fails the test instead of
      // being papered over by the poll.
      const node = await Cluster.join({
        connectionString: db.url,
        schema: db.schema,
        migrate: false,
        pollInterval: '1h',
        ...options,
      });
      open.push({ stop: () => node.stop({ timeout: 5_000 }) });
      return node;
    },
    client: () => {
      const client = createClient({ connectionString: db.url, schema: db.schema });
      open.push({ stop: () => client.close() });
      return client;
    },
  };
}
