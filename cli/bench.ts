/**
 * `gen-durable bench`: the benchmark suite (`bench/suite.ts`, the same as `npm run bench`),
 * run from a checkout of gen-durable, whose devDependencies hold the peers it measures
 * against. An installed package has no suite: it says where to get it.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The suite next to this module: `<checkout>/bench/suite.ts` from `cli/` or `dist/cli/`. */
function findSuite(): string | undefined {
  for (const up of ['../bench/suite.ts', '../../bench/suite.ts']) {
    const path = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(path)) return path;
  }
  return undefined;
}

/** Runs the suite with `args`; resolves to its exit code. */
export async function bench(args: readonly string[]): Promise<number> {
  const suite = findSuite();
  let tsx: string | undefined;
  try {
    tsx = createRequire(import.meta.url).resolve('tsx/esm');
  } catch {
    tsx = undefined;
  }
  if (!suite || !tsx) {
    console.error(
      'gen-durable bench runs the benchmark suite of a gen-durable checkout (it measures ' +
        'graphile-worker and pg-boss too, which are its devDependencies): clone the repository, ' +
        '`npm ci`, then `npm run bench` or `npx gen-durable bench`.',
    );
    return 2;
  }
  const child = spawn(process.execPath, ['--import', tsx, suite, ...args], { stdio: 'inherit' });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? 130 : 1))));
}
