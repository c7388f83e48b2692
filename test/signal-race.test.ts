/**
 * No lost wake-up: hundreds of instances race their park against a signal sent at once,
 * with two node processes running them. Whether the signal commits before the step runs,
 * while it runs, while its park is being committed or after, every instance is woken once.
 */
import { describe, expect, it } from 'vitest';
import { createClient } from '../index.js';
import { racer } from './fixtures/actor-machines.js';
import { useTestSchema } from './support/db.js';
import { CHAOS_HOST, allStarted, useHosts } from './support/host.js';

const db = useTestSchema('race');
const hosts = useHosts();
const OPTIONS = { queues: { actors: { concurrency: 32, threads: 1 } }, heartbeat: '500ms', lease: '3s' };

describe('park against signal', () => {
  it('300 insert→signal races over two node processes: every instance is woken, none twice', async () => {
    const nodes = ['race-a', 'race-b'].map((id) =>
      hosts.start(id, {
        fixture: CHAOS_HOST,
        args: [db.url, db.schema, id, JSON.stringify(OPTIONS)],
        env: { HOST_MACHINES: 'actors' },
      }),
    );
    await allStarted(nodes, 60_000);
    const client = createClient({ connectionString: db.url, schema: db.schema });
    try {
      const ids = await Promise.all(
        Array.from({ length: 300 }, async (_, i) => {
          const { id } = await client.insert(racer, { state: { i } });
          // Spread the signals over the instance's first moments: before it is picked, while
          // its step runs, while its park commits, after.
          const wait = i % 4 === 0 ? 0 : Math.floor(Math.random() * 30);
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          const sent = await client.signal(id, 'ping', i);
          expect(sent).toMatchObject({ delivered: true });
          return id;
        }),
      );
      const results = await Promise.all(ids.map((id) => client.waitFor(id, { timeout: '60s' })));
      const stuck = results.filter((r) => r.status !== 'done').map((r) => r.snapshot.id);
      expect(stuck).toEqual([]);
      results.forEach((r, i) => expect(r).toMatchObject({ status: 'done', result: { i, pings: 1 } }));
      const { rows } = await db.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM "${db.schema}".gen_durable_signals`,
      );
      expect(rows[0]!.n).toBe(0); // consumed, then cleared with the terminal outcome
    } finally {
      await client.close();
    }
  });
});
