/** Whole-schema statements (the CLI's demo cleans up after itself). */
import { loadPg } from '../pg.js';
import { quoteIdent, validateSchemaName } from './db.js';

/** Drops a schema and everything in it (used for throw-away schemas only). */
export async function dropSchema(connectionString: string, schema: string): Promise<void> {
  const client = new (loadPg().Client)({ connectionString });
  client.on('error', () => undefined);
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent(validateSchemaName(schema))} CASCADE`);
  } finally {
    await client.end();
  }
}
