/**
 * Telemetry: every event is published on a `node:diagnostics_channel` channel named
 * `gen_durable:<area>:<event>`, in the process where it happens. Publishing is skipped when
 * nobody subscribes, so events cost nothing by default. Payloads are documented in
 * docs/telemetry.md.
 */
import diagnostics from 'node:diagnostics_channel';

function channel(name: string): diagnostics.Channel {
  return diagnostics.channel(`gen_durable:${name}`);
}

export const telemetry = {
  stepStart: channel('step:start'),
  stepStop: channel('step:stop'),
  stepException: channel('step:exception'),
  pick: channel('pick'),
  flush: channel('flush'),
  outcomeStale: channel('outcome:stale'),
  outcomeAbandoned: channel('outcome:abandoned'),
  insert: channel('insert'),
  signal: channel('signal'),
  awaitTimeout: channel('await:timeout'),
  concurrencyContended: channel('concurrency:contended'),
  rateLimitThrottled: channel('rate_limit:throttled'),
  rateLimitUnknown: channel('rate_limit:unknown'),
  reaperReaped: channel('reaper:reaped'),
  gcSwept: channel('gc:swept'),
  leaderElected: channel('leader:elected'),
  leaderResigned: channel('leader:resigned'),
  nodeJoined: channel('node:joined'),
  nodeLeft: channel('node:left'),
  notifierReconnected: channel('notifier:reconnected'),
  error: channel('node:error'),
  clientError: channel('client:error'),
} as const;

export function publish(ch: diagnostics.Channel, payload: () => object): void {
  if (ch.hasSubscribers) ch.publish(payload());
}
