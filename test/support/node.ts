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
      const node = await Cluster.join({
        connectionString: db.url,
        schema: db.schema,
        migrate: false,
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
