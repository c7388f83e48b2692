/**
 * A worker process of a bench run (`bench/subjects/child.ts`): spawned with the subject's
 * settings, ready once the subject works; stopped on request, reporting its RSS.
 */
import { fork } from 'node:child_process';
import type { RunSettings, Subject } from '../subjects/subject.js';

const child = new URL('../subjects/child.ts', import.meta.url).pathname;

export interface Worker {
  readonly stop: () => Promise<number>;
  readonly exited: Promise<void>;
  /** The resident set it last reported, MiB. */
  readonly rss: () => number;
  /** Units it last reported finished. */
  readonly finished: () => number;
}

export function spawnWorker(
  subject: Subject,
  p: RunSettings & { readonly connectionString: string },
  schema: string,
): Promise<Worker> {
  const settings = JSON.stringify({
    workload: p.workload,
    concurrency: p.concurrency,
    processes: p.processes,
  });
  const proc = fork(child, [subject.name, p.connectionString, schema, settings], {
    execArgv: ['--import', 'tsx/esm'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  // Should the bench die first, its workers go with it.
  const kill = (): void => void proc.kill('SIGKILL');
  process.once('exit', kill);
  const exited = new Promise<void>((resolve) =>
    proc.once('exit', () => {
      process.off('exit', kill);
      resolve();
    }),
  );
  return new Promise((resolve, reject) => {
    proc.once('exit', (code) =>
      reject(new Error(`${subject.name} worker exited (${code}) before it was ready`)),
    );
    let rss = Number.NaN;
    let finished = 0;
    proc.on('message', (m: { type: string; rss: number; units: number }) => {
      if (m.type === 'finished') finished = m.units;
      else rss = m.rss / 2 ** 20;
      if (m.type !== 'ready') return;
      resolve({
        exited,
        rss: () => rss,
        finished: () => finished,
        stop: () =>
          new Promise<number>((done) => {
            proc.on('message', (s: { type: string; rss: number }) => {
              if (s.type === 'stopped') done(s.rss / 2 ** 20);
            });
            proc.send({ type: 'stop' });
            setTimeout(() => {
              proc.kill('SIGKILL');
              done(Number.NaN);
            }, 30_000).unref();
          }),
      });
    });
  });
}
