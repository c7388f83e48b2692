/**
 * `npm run bench:failover`: how long a cluster of node processes (default options, 3 nodes)
 * goes without a leader when its leader is SIGKILLed, and when it is stopped with SIGTERM.
 * Each round starts fresh processes (`test/fixtures/chaos-host.ts`) in a fresh schema,
 * waits for one leader, ends it, and times the next `leader:elected` from the signal.
 *
 * Flags: --rounds 3 --nodes 3
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { migrate } from '../migrations/migrate.js';
import { dropSchema } from '../runtime/sql/schema.js';
import { eventually } from '../test/support/eventually.js';
import { CHAOS_HOST, Host } from '../test/support/host-process.js';

const { values: flags } = parseArgs({
  options: { rounds: { type: 'string', default: '3' }, nodes: { type: 'string', default: '3' } },
  strict: true,
});
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const WAIT_MS = 60_000;

async function round(signal: 'SIGKILL' | 'SIGTERM'): Promise<number> {
  const schema = `failover_${randomBytes(4).toString('hex')}`;
  await migrate({ connectionString: url, schema });
  const nodes = Array.from({ length: Number(flags.nodes) }, (_, i) => {
    const id = `n${i}`;
    return new Host(id, { fixture: CHAOS_HOST, args: [url, schema, id, '{}'] });
  });
  try {
    await Promise.all(nodes.map((n) => n.next((e) => e.event === 'started', 'started', WAIT_MS)));
    const leader = await eventually(() => Promise.resolve(nodes.find((n) => n.leading)), 'a leader', WAIT_MS);
    // Every follower has beaten since the election, so the figure is not a join-time artefact.
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    const at = Date.now();
    leader.kill(signal);
    const elected = (e: { event: string; at: number }): boolean => e.event === 'elected' && e.at >= at;
    const next = await eventually(
      () => Promise.resolve(nodes.filter((n) => n !== leader).find((n) => n.events.some(elected))),
      'the next leader',
      WAIT_MS,
    );
    return next.events.find(elected)!.at - at;
  } finally {
    for (const n of nodes) n.kill('SIGKILL');
    await Promise.all(nodes.map((n) => n.exited));
    await dropSchema(url, schema);
  }
}

for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
  const times: number[] = [];
  for (let i = 0; i < Number(flags.rounds); i++) times.push(await round(signal));
  console.log(
    `${signal} of the leader → next leader elected after: ${times.map((t) => `${t} ms`).join(', ')}`,
  );
}
