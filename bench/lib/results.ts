/**
 * Every workload's figures as one JSON line in `bench/results/<workload>.jsonl` (appended, so
 * runs accumulate and can be compared), next to the printed table.
 */
import { appendFile, mkdir } from 'node:fs/promises';
import os from 'node:os';

const dir = new URL('../results/', import.meta.url);

export async function record(workload: string, figures: Record<string, unknown>): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = new URL(`${workload}.jsonl`, dir);
  const line = {
    workload,
    at: new Date().toISOString(),
    host: { cpus: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version },
    ...figures,
  };
  await appendFile(file, `${JSON.stringify(line)}\n`);
  return file.pathname;
}
