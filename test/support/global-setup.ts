/**
 * Finds a Postgres for the test run: `DATABASE_URL` when set; else a container when a
 * container runtime answers (testcontainers); else an embedded Postgres (binaries from npm).
 * Each test file then works in its own schema of that database (see `db.ts`).
 */
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres } from '../../cli/embedded-postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    databaseUrl: string;
  }
}

async function fromContainer(): Promise<{ url: string; stop: () => Promise<void> } | undefined> {
  let tc: typeof import('testcontainers');
  try {
    tc = await import('testcontainers');
    await tc.getContainerRuntimeClient();
  } catch {
    return undefined; // no container runtime answers here
  }
  const container = await new tc.GenericContainer('postgres:16-alpine')
    .withEnvironment({ POSTGRES_PASSWORD: 'postgres', POSTGRES_DB: 'test' })
    .withExposedPorts(5432)
    .withWaitStrategy(tc.Wait.forLogMessage(/database system is ready to accept connections/, 2))
    .start();
  return {
    url: `postgres://postgres:postgres@${container.getHost()}:${container.getMappedPort(5432)}/test`,
    stop: async () => {
      await container.stop();
    },
  };
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let stop = (): Promise<void> => Promise.resolve();
  let url = process.env.DATABASE_URL;
  if (!url) {
    const db = (await fromContainer()) ?? (await startEmbeddedPostgres());
    url = db.url;
    stop = () => db.stop();
  }
  project.provide('databaseUrl', url);
  return stop;
}
