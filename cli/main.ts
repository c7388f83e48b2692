#!/usr/bin/env node
/** The `gen-durable` command: `migrate`, `status`, `demo`. */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { migrate } from '../migrations/migrate.js';
import { createClient } from '../runtime/client.js';
import { validateSchemaName } from '../runtime/sql/db.js';
import { listNodes } from '../runtime/sql/nodes.js';
import { demo } from './demo.js';

const usage = `usage: gen-durable <command> [options]
  migrate  [--schema S]          apply the schema migrations (DATABASE_URL)
  status   [--schema S]          nodes and per-queue counts by status
  demo     [--orders N]          run a demo workload (embedded Postgres unless DATABASE_URL)`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: { schema: { type: 'string', default: 'public' }, orders: { type: 'string', default: '2000' } },
    strict: true,
  });
  const url = process.env.DATABASE_URL;
  switch (command) {
    case 'migrate': {
      if (!url) throw new Error('set DATABASE_URL');
      const applied = await migrate({ connectionString: url, schema: values.schema });
      console.log(applied.length ? `applied ${applied.join(', ')}` : 'up to date');
      return 0;
    }
    case 'status': {
      if (!url) throw new Error('set DATABASE_URL');
      const pool = new pg.Pool({ connectionString: url, max: 2 });
      const client = createClient({ pool, schema: values.schema });
      try {
        const nodes = await listNodes(pool, validateSchemaName(values.schema, '--schema'));
        console.log(`nodes: ${nodes.length}`);
        for (const n of nodes) console.log(`  ${n.id} (heartbeat ${n.heartbeat_at.toISOString()})`);
        for (const c of await client.count()) console.log(`  ${c.queue} ${c.machine} ${c.status} ${c.count}`);
      } finally {
        await client.close();
        await pool.end();
      }
      return 0;
    }
    case 'demo':
      await demo({ orders: Number(values.orders) });
      return 0;
    default:
      console.error(usage);
      return command ? 2 : 0;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
