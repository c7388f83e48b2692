/** The warning a node gives when it is handed machines whose default queue it does not run. */
import type { AnyMachine } from '../runtime/machine.js';

/** Registered machines whose default queue this node does not run wait for another node. */
export function warnUnservedQueues(
  nodeId: string,
  queues: readonly string[],
  machines: readonly AnyMachine[],
): void {
  const unserved = machines.filter((def) => !queues.includes(def.queue));
  if (unserved.length === 0) return;
  const listed = unserved
    .slice(0, 10)
    .map((def) => `machine ${def.name} (version ${def.version}) on queue "${def.queue}"`)
    .join(', ');
  const more = unserved.length > 10 ? ` and ${unserved.length - 10} more` : '';
  process.emitWarning(
    `node ${nodeId} runs the queues ${queues.join(', ')}, but is given ${listed}${more}: ` +
      'their instances wait for a node that runs those queues',
    { code: 'GEN_DURABLE_QUEUE_NOT_RUN' },
  );
}
