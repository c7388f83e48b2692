// Entry file of every worker thread (plain JavaScript so that Node can load it before any
// loader is registered). When the engine itself runs from TypeScript sources (under tsx or
// vitest), the worker registers tsx's loader hooks first, since Node 20 keeps loader hooks
// per thread; then it hands over to the real worker module.
import { workerData } from 'piscina';

const REGISTERED = Symbol.for('gen-durable.tsx-registered');
// Marks this thread as a gen-durable worker: `Cluster.join` refuses to start a node here (a
// machine module that joins at its top level would otherwise start a node per thread).
globalThis[Symbol.for('gen-durable.worker-thread')] = true;
const entry = workerData.entry;
if (/\.[cm]?ts$/.test(entry) && !globalThis[REGISTERED]) {
  const { register } = await import('tsx/esm/api');
  register();
  globalThis[REGISTERED] = true;
}
const mod = await import(entry);

export default mod.default;
