/**
 * Rate limits across node processes (SPEC §7): three processes picking from one bucket at
 * once never grant more than burst + rate × elapsed, checked against every grant the bucket
 * recorded (a trigger of this test's schema logs each grant with the connection that made
 * it), and every step that ran was granted exactly one token.
 */
import { describe, expect, it } from 'vitest';
import { createClient } from '../index.js';
import { paced } from './fixtures/rate-machines.js';
import { useTestSchema } from './support/db.js';
import { grantsOf, logGrants, worstExcess } from './support/grants.js';
import { CHAOS_HOST, allStarted, useHosts } from './support/host.js';

const db = useTestSchema('ratescluster');
const hosts = useHosts();

describe('rate limits across processes', () => {
  it('three node processes sharing a bucket grant at most burst + rate × elapsed, one token per step', async () => {
    await logGrants(db.pool, db.schema);
    const allowed = 40;
    const burst = 5;
    const options = {
      queues: { rates: { concurrency: 16 } },
      rateLimits: { paced: { allowed, period: '1s', burst } },
      heartbeat: '500ms',
      lease: '3s',
    };
    const nodes = ['rates-a', 'rates-b', 'rates-c'].map((id) =>
      hosts.start(id, {
        fixture: CHAOS_HOST,
        args: [db.url, db.schema, id, JSON.stringify(options)],
        env: { HOST_MACHINES: 'rates' },
      }),
    );
    await allStarted(nodes, 60_000);
    const client = createClient({ connectionString: db.url, schema: db.schema });
    try {
      const jobs = 120;
      const inserted = await client.insertAll(
        Array.from({ length: jobs }, (_, n) => ({ machine: paced, args: { n }, rateLimit: 'paced' })),
      );
      const results = await Promise.all(inserted.map((r) => client.waitFor(r.id, { timeout: '60s' })));
      expect(results.map((r) => r.status)).toEqual(inserted.map(() => 'done'));
      const log = await grantsOf(db.pool, db.schema, 'paced');
      // Every step that ran took one token, and no token was granted to a step that did not run.
      expect(log.reduce((n, g) => n + g.granted, 0)).toBe(jobs);
      // The grants came from more than one process.
      expect(new Set(log.map((g) => g.app)).size).toBeGreaterThan(1);
      // In every window between two grants, at most burst + rate × its length was granted.
      expect(worstExcess(log, allowed, 1_000, burst)).toBeLessThanOrEqual(1e-6);
    } finally {
      await client.close();
    }
  });
});
