/**
 * Opt-in graceful shutdown for processes that embed a node: on SIGTERM or SIGINT, drain the
 * node (`node.stop({ timeout })`: in-flight steps finish and commit, the rest go back to the
 * queue uncharged), then exit. A second signal while draining exits at once (the rows still
 * claimed are reaped when their leases expire).
 */
import { z } from 'zod';
import { durationSchema } from '../runtime/duration.js';
import { errorMessage, parseInput } from '../runtime/errors.js';

export interface ShutdownOptions {
  /** How long in-flight steps may take to finish (default 30 s). */
  readonly timeout?: number | string;
  /** Default `['SIGTERM', 'SIGINT']`. */
  readonly signals?: readonly NodeJS.Signals[];
  /** Exit the process after the drain (default true); false only drains. */
  readonly exit?: boolean;
  /** Called once the drain ended (before exiting), with the error if it failed. */
  readonly onDrained?: (error?: unknown) => void;
}

const shutdownOptionsSchema = z
  .object({
    timeout: durationSchema.default(30_000),
    signals: z
      .array(z.string().regex(/^SIG[A-Z0-9]+$/, 'must be a signal name like SIGTERM'))
      .min(1)
      .default(['SIGTERM', 'SIGINT']),
    exit: z.boolean().default(true),
    onDrained: z.custom<(error?: unknown) => void>((v) => typeof v === 'function').optional(),
  })
  .strict();

interface Stoppable {
  stop(options?: { timeout?: number | string }): Promise<void>;
}

/**
 * Drains `node` when the process gets one of `signals`, then exits (0 when the drain
 * succeeded, 1 otherwise). Returns a function that removes the handlers.
 */
export function shutdownOnSignals(node: Stoppable, options: ShutdownOptions = {}): () => void {
  const o = parseInput(shutdownOptionsSchema, options, 'options');
  let draining = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (draining) {
      process.stderr.write(`gen-durable: ${signal} again while draining: exiting now\n`);
      process.exit(1);
    }
    draining = true;
    node.stop({ timeout: o.timeout }).then(
      () => {
        o.onDrained?.();
        if (o.exit) process.exit(0);
      },
      (error: unknown) => {
        process.stderr.write(`gen-durable: drain failed: ${errorMessage(error)}\n`);
        o.onDrained?.(error);
        if (o.exit) process.exit(1);
      },
    );
  };
  const signals = o.signals as NodeJS.Signals[];
  for (const signal of signals) process.on(signal, onSignal);
  return () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
}
