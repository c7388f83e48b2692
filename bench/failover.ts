/**
 * `npm run bench:failover`: how long a cluster of node processes (default options, 3 nodes)
 * goes without a leader when its leader is SIGKILLed, and when it is stopped with SIGTERM.
 * Each round starts fresh processes (`test/fixtures/chaos-host.ts`) in a fresh schema,
 * waits for one leader, ends it, and times the next `leader:elected` from the signal.
 *
 * Flags: --rounds 3 --nodes 3
 */
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { migrate } from '../migrations/migrate.js';
import { dropSchema } from '../runtime/sql/schema.js';

const { values: flags } = parseArgs({
  options: { rounds: { type: 'string', default: '3' }, nodes: { type: 'string', default: '3' } },
  strict: true,
});
const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const root = fileURLToPath(new URL('..', import.meta.url));
const host = fileURLToPath(new URL('../test/fixtures/chaos-host.ts', import.meta.url));

interface Node {
  readonly id: string;
  readonly child: ChildProcessByStdio<Writable, Readable, null>;
  readonly events: Array<{ event: string; at: number }>;
}

function start(schema: string, id: string): Node {
  const child = spawn(process.execPath, ['--import', 'tsx', host, url, schema, id, '{}'], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  const node: Node = { id, child, events: [] };
  let buffer = '';
  child.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop()!;
    for (const line of lines)
      if (line.startsWith('{')) node.events.push(JSON.parse(line) as { event: string; at: number });
  });
  return node;
}

async function until<T>(check: () => T | undefined): Promise<T> {
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const leading = (n: Node): boolean =>
  n.events.filter((e) => e.event === 'elected' || e.event === 'resigned').at(-1)?.event === 'elected';

async function round(signal: 'SIGKILL' | 'SIGTERM'): Promise<number> {
  const schema = `failover_${randomBytes(4).toString('hex')}`;
  await migrate({ connectionString: url, schema });
  const nodes = Array.from({ length: Number(flags.nodes) }, (_, i) => start(schema, `n${i}`));
  try {
    await until(() => (nodes.every((n) => n.events.some((e) => e.event === 'started')) ? true : undefined));
    const leader = await until(() => nodes.find(leading));
    // Every follower has beaten since the election, so the figure is not a join-time artefact.
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    const at = Date.now();
    leader.child.kill(signal);
    const next = await until(() =>
      nodes
        .filter((n) => n !== leader)
        .find((n) => n.events.some((e) => e.event === 'elected' && e.at >= at)),
    );
    return next.events.find((e) => e.event === 'elected' && e.at >= at)!.at - at;
  } finally {
    for (const n of nodes) n.child.kill('SIGKILL');
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
