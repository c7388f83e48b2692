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
import { CHAOS_HOST, allStarted, useHosts } from './support/host.js';

const db = useTestSchema('ratescluster');
const hosts = useHosts();

interface Grant {
  at: Date;
  granted: number;
  app: string;
}

describe('rate limits across processes', () => {
  it('three node processes sharing a bucket grant at most burst + rate × elapsed, one token per step', async () => {
    const s = `"${db.schema}"`;
    await db.pool.query(`
      CREATE TABLE ${s}.grants (at timestamptz, granted int, app text);
      CREATE FUNCTION ${s}.log_grant() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.name = 'paced' AND NEW.granted > 0 THEN
          INSERT INTO ${s}.grants VALUES (NEW.refreshed_at, NEW.granted, current_setting('application_name'));
        END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER log_grant AFTER INSERT OR UPDATE ON ${s}.gen_durable_rate_buckets
        FOR EACH ROW EXECUTE FUNCTION ${s}.log_grant();`);
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
      const { rows: log } = await db.pool.query<Grant>(`SELECT * FROM ${s}.grants ORDER BY at`);
      // Every step that ran took one token, and no token was granted to a step that did not run.
      expect(log.reduce((n, g) => n + g.granted, 0)).toBe(jobs);
      // The grants came from more than one process.
      expect(new Set(log.map((g) => g.app)).size).toBeGreaterThan(1);
      // In every window between two grants, at most burst + rate × its length was granted.
      let worst = Number.NEGATIVE_INFINITY;
      for (let i = 0; i < log.length; i++) {
        let taken = 0;
        for (let j = i; j < log.length; j++) {
          taken += log[j]!.granted;
          const elapsed = log[j]!.at.getTime() - log[i]!.at.getTime();
          worst = Math.max(worst, taken - (burst + (allowed * elapsed) / 1_000));
        }
      }
      expect(worst).toBeLessThanOrEqual(1e-6);
    } finally {
      await client.close();
    }
  });
});
