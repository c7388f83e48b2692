/**
 * `npm run test:packed`: the package as users get it. Deletes `dist/` (as in a fresh clone),
 * packs the tarball (which must build it),
 * installs it into a scratch app outside this repository, and there:
 * 1. runs a plain-JS machine through a node (compiled package, no TypeScript anywhere);
 * 2. runs a TypeScript machine under tsx;
 * 3. type-checks a strict TypeScript app against the published types;
 * 4. runs the `gen-durable` bin (`--help`, `migrate`).
 * Uses DATABASE_URL, else an embedded Postgres; drops what it creates.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startEmbeddedPostgres } from '../cli/embedded-postgres.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const versions = (name: string): string =>
  (
    JSON.parse(readFileSync(path.join(root, 'node_modules', name, 'package.json'), 'utf8')) as {
      version: string;
    }
  ).version;

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): string {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  return execFileSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', stdio: 'pipe' });
}

const scratch = mkdtempSync(path.join(tmpdir(), 'gen-durable-packed-'));
const embedded = process.env.DATABASE_URL ? undefined : await startEmbeddedPostgres();
const url = process.env.DATABASE_URL ?? embedded!.url;
const schema = `packed_${Date.now().toString(36)}`;
try {
  // As from a fresh clone: no build output. Packing must build it (prepack).
  rmSync(path.join(root, 'dist'), { recursive: true, force: true });
  const tarball = sh('npm', ['pack', '--silent', '--pack-destination', scratch], root)
    .trim()
    .split('\n')
    .at(-1)!;
  writeFileSync(
    path.join(scratch, 'package.json'),
    JSON.stringify({ name: 'scratch-app', private: true, type: 'module' }, null, 2),
  );
  sh(
    'npm',
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
      path.join(scratch, tarball),
      `tsx@${versions('tsx')}`,
      `typescript@${versions('typescript')}`,
      `@types/node@${versions('@types/node')}`,
    ],
    scratch,
  );

  writeFileSync(
    path.join(scratch, 'machines.js'),
    `import { z } from 'zod';
import { defineJob } from 'gen-durable';
export const greet = defineJob({
  module: import.meta.url,
  name: 'packed-greet-js',
  queue: 'packed',
  args: z.object({ name: z.string() }),
  perform: (args) => 'hello ' + args.name + ' from js',
});
`,
  );
  writeFileSync(
    path.join(scratch, 'machines-ts.ts'),
    `import { z } from 'zod';
import { defineMachine, next, done } from 'gen-durable';
export const greetTs = defineMachine({
  module: import.meta.url,
  name: 'packed-greet-ts',
  queue: 'packed',
  state: z.object({ name: z.string(), greeting: z.string().optional() }),
  initial: 'compose',
  steps: {
    compose: (s) => next('finish', { ...s, greeting: 'hello ' + s.name + ' from ts' }),
    finish: (s) => done(s.greeting),
  },
});
`,
  );
  const host = (
    machine: string,
    from: string,
    input: string,
  ): string => `import { Cluster } from 'gen-durable';
import { ${machine} } from './${from}';
const [url, schema] = process.argv.slice(2);
const node = await Cluster.join({ connectionString: url, schema, machines: [${machine}], queues: { packed: { concurrency: 2 } } });
try {
  const { id } = await node.client.insert(${machine}, ${input});
  const r = await node.client.waitFor(id, { timeout: '30s' });
  console.log(JSON.stringify({ status: r.status, result: r.status === 'done' ? r.result : null }));
} finally {
  await node.stop({ timeout: 5000 });
}
`;
  writeFileSync(path.join(scratch, 'host.js'), host('greet', 'machines.js', "{ args: { name: 'ada' } }"));
  writeFileSync(
    path.join(scratch, 'host.ts'),
    host('greetTs', 'machines-ts.js', "{ state: { name: 'bob' } }"),
  );
  writeFileSync(
    path.join(scratch, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        target: 'ES2022',
        noEmit: true,
        exactOptionalPropertyTypes: true,
        noUncheckedIndexedAccess: true,
        skipLibCheck: false,
      },
      files: ['host.ts', 'machines-ts.ts'],
    }),
  );

  const lastJson = (out: string): unknown => JSON.parse(out.trim().split('\n').at(-1)!);
  const js = lastJson(sh(process.execPath, ['host.js', url, schema], scratch, { NODE_OPTIONS: '' }));
  const ts = lastJson(
    sh(process.execPath, ['--import', 'tsx', 'host.ts', url, schema], scratch, { NODE_OPTIONS: '' }),
  );
  sh(path.join(scratch, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.json'], scratch);
  const help = sh(path.join(scratch, 'node_modules/.bin/gen-durable'), ['--help'], scratch);
  const migrated = sh(
    path.join(scratch, 'node_modules/.bin/gen-durable'),
    ['migrate', '--database-url', url, '--schema', schema],
    scratch,
  );
  const expected = [
    [js, { status: 'done', result: 'hello ada from js' }],
    [ts, { status: 'done', result: 'hello bob from ts' }],
  ] as const;
  for (const [got, want] of expected) {
    if (JSON.stringify(got) !== JSON.stringify(want))
      throw new Error(`got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
  if (!/usage: gen-durable <command>/.test(help)) throw new Error(`unexpected --help output: ${help}`);
  if (!/up to date/.test(migrated)) throw new Error(`unexpected migrate output: ${migrated}`);
  console.log(
    'packed package: js machine done, ts machine done under tsx, strict type-check clean, bin works',
  );
} finally {
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
  await pool.end();
  await embedded?.stop();
  rmSync(scratch, { recursive: true, force: true });
}
