/**
 * Cheap CPU counters for the bench: the whole host (`os.cpus()`), this process (main thread
 * plus worker threads, `process.cpuUsage()`) and, on Linux when the server runs on this host,
 * every `postgres` process (`/proc/<pid>/stat`). Results are in cores (1.0 = one core busy
 * for the whole window). A `CpuMeter` re-reads the postgres processes every few hundred ms,
 * so that backends which exit inside the window (pgbench's) still count, up to their last
 * reading.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';

export interface CpuSample {
  readonly at: number;
  readonly hostBusyMs: number;
  readonly hostTotalMs: number;
  readonly process: NodeJS.CpuUsage;
  /** Per postgres pid: utime + stime in ms; empty when not readable. */
  readonly postgres: ReadonlyMap<number, number>;
  /** This process's main thread: utime + stime in ms (Linux), else undefined. */
  readonly mainThreadMs: number | undefined;
}

export interface CpuWindow {
  readonly seconds: number;
  readonly hostCores: number;
  /** Cores busy on the whole host (all processes). */
  readonly hostBusy: number;
  /** Cores used by this Node process (main + worker threads). */
  readonly node: number;
  /** Of those, the main thread's (Linux), else undefined. */
  readonly mainThread: number | undefined;
  /** Cores used by postgres processes on this host, or undefined when they are not visible. */
  readonly postgres: number | undefined;
}

let ticksPerSecond: number | undefined;
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** utime + stime in ms of a `/proc` stat line (fields 14 and 15, after the command). */
function statMs(stat: string): number {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * (1000 / clockTicks());
}

function mainThreadCpu(): number | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    return statMs(readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

function postgresCpu(): Map<number, number> {
  const found = new Map<number, number>();
  if (process.platform !== 'linux') return found;
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return found;
  }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const open = stat.indexOf('(');
      const close = stat.lastIndexOf(')');
      if (stat.slice(open + 1, close) !== 'postgres') continue;
      found.set(Number(pid), statMs(stat));
    } catch {
      // the process ended meanwhile
    }
  }
  return found;
}

export function sampleCpu(): CpuSample {
  let busy = 0;
  let total = 0;
  for (const cpu of os.cpus()) {
    const t = cpu.times;
    busy += t.user + t.nice + t.sys + t.irq;
    total += t.user + t.nice + t.sys + t.irq + t.idle;
  }
  return {
    at: performance.now(),
    hostBusyMs: busy,
    hostTotalMs: total,
    process: process.cpuUsage(),
    postgres: postgresCpu(),
    mainThreadMs: mainThreadCpu(),
  };
}

export function cpuBetween(a: CpuSample, b: CpuSample): CpuWindow {
  const seconds = (b.at - a.at) / 1000;
  const cores = os.cpus().length;
  const totalMs = b.hostTotalMs - a.hostTotalMs;
  const hostBusy = totalMs > 0 ? ((b.hostBusyMs - a.hostBusyMs) / totalMs) * cores : 0;
  const nodeMs = (b.process.user + b.process.system - a.process.user - a.process.system) / 1000;
  let postgres: number | undefined;
  if (b.postgres.size > 0) {
    let ms = 0;
    // Processes that started inside the window count from zero; ones that ended are lost.
    for (const [pid, now] of b.postgres) ms += now - (a.postgres.get(pid) ?? 0);
    postgres = ms / 1000 / seconds;
  }
  const mainThread =
    a.mainThreadMs === undefined || b.mainThreadMs === undefined
      ? undefined
      : (b.mainThreadMs - a.mainThreadMs) / 1000 / seconds;
  return { seconds, hostCores: cores, hostBusy, node: nodeMs / 1000 / seconds, mainThread, postgres };
}

/** Measures a window; postgres processes are re-read every `intervalMs`. */
export class CpuMeter {
  readonly #first: CpuSample;
  readonly #last = new Map<number, number>();
  readonly #timer: NodeJS.Timeout;

  constructor(intervalMs = 250) {
    this.#first = sampleCpu();
    this.#timer = setInterval(() => this.#read(postgresCpu()), intervalMs);
    this.#timer.unref();
  }

  #read(now: ReadonlyMap<number, number>): void {
    for (const [pid, msUsed] of now) this.#last.set(pid, msUsed);
  }

  stop(): CpuWindow {
    clearInterval(this.#timer);
    const end = sampleCpu();
    this.#read(end.postgres);
    return cpuBetween(this.#first, { ...end, postgres: this.#last });
  }
}
