/**
 * Connection strings and connection failures, as a user meets them: a string that is not a
 * Postgres URL is refused before anything connects (pg would read `garbage` as a database
 * on host `base`), and a failure to connect says where it tried.
 */
import type pg from 'pg';
import { z } from 'zod';

const URL_FORM = /^(postgres|postgresql):\/\/[^\s]*$/;
const SOCKET_FORM = /^(socket:|\/)/;

/** A Postgres connection URL (`postgres://user:password@host:5432/database`) or a socket path. */
export const connectionStringSchema = z
  .string()
  .min(1)
  .refine(
    (s) => URL_FORM.test(s) || SOCKET_FORM.test(s),
    'is not a Postgres connection URL (postgres://user:password@host:5432/database, or a socket path)',
  );

/** Where a connection goes, for messages: `host:port/database`, never the password. */
export function describeConnection(config: {
  connectionString?: string | undefined;
  host?: string | undefined;
  port?: number | undefined;
  database?: string | undefined;
}): string {
  let host = config.host;
  let port = config.port === undefined ? undefined : String(config.port);
  let database = config.database;
  if (config.connectionString && URL_FORM.test(config.connectionString)) {
    try {
      const url = new URL(config.connectionString);
      host = decodeURIComponent(url.hostname) || host;
      port = url.port || port;
      database = decodeURIComponent(url.pathname.replace(/^\//, '')) || database;
    } catch {
      // keep what the config says
    }
  }
  return `${host ?? 'localhost'}:${port ?? '5432'}/${database ?? '(default database)'}`;
}

/**
 * Destroys a client's socket at once, without the goodbye `end()` would wait for (the server
 * may not answer): a pending `connect()` fails, and the backend ends with the socket (any
 * session lock goes with it).
 */
export function destroySocket(client: pg.Client): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/** Drops a connected client without waiting for the server: `end()` asked for, the socket destroyed. */
export function dropConnection(client: pg.Client): void {
  void client.end().catch(() => undefined);
  destroySocket(client);
}
