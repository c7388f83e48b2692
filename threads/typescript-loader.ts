/**
 * Loader hooks are per thread in Node 20: a worker that must import `.ts` modules registers
 * tsx's hooks itself, once. `bootstrap.mjs` shares the same global flag.
 */
const REGISTERED = Symbol.for('gen-durable.tsx-registered');

export function isTypeScriptModule(url: string): boolean {
  return /\.[cm]?tsx?$/.test(url.split('?')[0] ?? url);
}

export async function ensureTypeScriptLoader(): Promise<void> {
  const g = globalThis as { [REGISTERED]?: boolean };
  if (g[REGISTERED]) return;
  const { register } = (await import('tsx/esm/api')) as { register: () => unknown };
  register();
  g[REGISTERED] = true;
}
