/** gen-durable: durable state machines and jobs for Node.js, kept in PostgreSQL. */
export { Cluster } from './cluster/cluster.js';
export type { GenDurableNode, StopOptions } from './cluster/node.js';
export type { JoinOptions } from './cluster/options.js';
export { shutdownOnSignals } from './cluster/shutdown.js';
export type { ShutdownOptions } from './cluster/shutdown.js';
export { createClient, Client } from './runtime/client.js';
export type {
  ClientOptions,
  InsertItem,
  InsertResult,
  SignalResult,
  Snapshot,
  Target,
  TypedId,
  WaitResult,
} from './runtime/client.js';
export type { InsertOptions, InsertSettings } from './runtime/insert-options.js';
export { defineMachine, defineJob } from './runtime/machine.js';
export type {
  AnyMachine,
  DefinitionKind,
  JobConfig,
  JobResult,
  JobDefinition,
  MachineConfig,
  MachineDefinition,
  MachineResult,
  ResultOf,
  StepContext,
  Signal,
  ChildInfo,
  EnqueueOptions,
  StepFailure,
  StepFailureKind,
} from './runtime/machine.js';
export { next, retry, awaitSignals, spawn, done, stop, isOutcome } from './runtime/outcome.js';
export type {
  Outcome,
  NextOutcome,
  RetryOutcome,
  AwaitOutcome,
  AwaitOptions,
  SpawnOutcome,
  ChildSpec,
  DoneOutcome,
  StopOutcome,
  NextOptions,
} from './runtime/outcome.js';
export { STATUS, LIVE_STATUSES, TERMINAL_STATUSES, ALL_STATUSES } from './runtime/status.js';
export type { Status } from './runtime/status.js';
export { GenDurableError, ValidationError } from './runtime/errors.js';
export type { ErrorCode } from './runtime/errors.js';
export { parseDuration } from './runtime/duration.js';
export type { Jsonified } from './runtime/json.js';
export type { Duration } from './runtime/duration.js';
export { defaultBackoff } from './runtime/backoff.js';
export { migrate } from './migrations/migrate.js';
export type { MigrateOptions } from './migrations/migrate.js';
