/** Sending notifications: any number of payloads on one channel in one statement. */
import { type Queryable, run, statement } from './db.js';

export async function sendNotifications(
  db: Queryable,
  schema: string,
  channel: string,
  payloads: readonly string[],
): Promise<void> {
  const stmt = statement(schema, 'notify', `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`);
  await run(db, stmt, [channel, payloads]);
}
