/**
 * A node process: a `Host` spawns `node --import tsx <fixture> ...args` and collects the
 * JSON event lines it prints on stdout (`{ event, node, pid, at, ... }`). No test runner
 * needed: the cluster tests (`host.ts`) and `bench/failover.ts` use it.
 */
import { type ChildProcessByStdio, spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { eventually } from './eventually.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

/** The node-process fixture of the cluster tests and benches (`fixtures/chaos-host.ts`). */
export const CHAOS_HOST = fileURLToPath(new URL('../fixtures/chaos-host.ts', import.meta.url));

/** One line a host printed; `at` is its `Date.now()`. */
export interface HostEvent {
  readonly event: string;
  readonly node: string;
  readonly pid: number;
  readonly at: number;
  readonly reason?: string;
  readonly ids?: readonly string[];
  readonly [key: string]: unknown;
}

export interface HostOptions {
  /** The fixture's path (absolute). */
  readonly fixture: string;
  /** Its arguments after the file. */
  readonly args: readonly string[];
  /** Added to this process's environment. */
  readonly env?: Readonly<Record<string, string>>;
}

export class Host {
  readonly events: HostEvent[] = [];
  readonly exited: Promise<number | null>;
  readonly pid: number;
  #exitCode: number | null | undefined;
  // stdin is a pipe the host may watch: it ends when this process dies, however it dies.
  readonly #child: ChildProcessByStdio<Writable, Readable, null>;

  constructor(
    readonly id: string,
    options: HostOptions,
  ) {
    this.#child = spawn(process.execPath, ['--import', 'tsx', options.fixture, ...options.args], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, ...options.env },
    });
    this.pid = this.#child.pid!;
    this.#child.stdin.on('error', () => undefined); // EPIPE once the host has exited
    let buffer = '';
    this.#child.stdout.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop()!;
      for (const line of lines) if (line.startsWith('{')) this.events.push(JSON.parse(line) as HostEvent);
    });
    this.exited = new Promise((resolve) =>
      this.#child.on('exit', (code) => {
        this.#exitCode = code;
        resolve(code);
      }),
    );
  }

  get alive(): boolean {
    return this.#exitCode === undefined;
  }

  /** Whether it says it leads: its last election event is `elected`. */
  get leading(): boolean {
    return (
      this.alive &&
      this.events.filter((e) => e.event === 'elected' || e.event === 'resigned').at(-1)?.event === 'elected'
    );
  }

  /** Whether every thread of the process is stopped (SIGSTOP took effect: state `T` in /proc; Linux). */
  get stopped(): boolean {
    return readdirSync(`/proc/${this.pid}/task`).every((task) => {
      const stat = readFileSync(`/proc/${this.pid}/task/${task}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
    });
  }

  count(event: string): number {
    return this.events.filter((e) => e.event === event).length;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.alive) this.#child.kill(signal);
  }

  /** The first event (from `from` on) that `match` accepts, once the host printed it. */
  async next(
    match: (e: HostEvent) => boolean,
    what: string,
    timeoutMs: number,
    from = 0,
  ): Promise<HostEvent> {
    return eventually(
      () => {
        const found = this.events.slice(from).find(match);
        if (!found && !this.alive) throw new Error(`host ${this.id} exited before ${what}`);
        return Promise.resolve(found);
      },
      `${what} (host ${this.id})`,
      timeoutMs,
    );
  }
}
