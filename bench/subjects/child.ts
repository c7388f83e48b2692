/**
 * One worker process of a drain: `child.ts <subject> <connectionString> <schema> <settings JSON>`.
 * Starts the subject's worker, says `ready` over IPC, stops on `stop` and says `stopped`.
 */
import { SUBJECTS } from './index.js';
import type { RunSettings } from './subject.js';

// Worker threads this process starts run plain JavaScript: none of tsx's hooks there.
process.execArgv.length = 0;

const [name, connectionString, schema, settings] = process.argv.slice(2);
const subject = SUBJECTS[name ?? ''];
if (!subject || !connectionString || !schema || !settings) {
  process.stderr.write(`usage: child.ts <${Object.keys(SUBJECTS).join('|')}> <url> <schema> <settings>\n`);
  process.exit(2);
}
// Latency jobs find their table through the environment (worker threads inherit it).
process.env.BENCH_URL = connectionString;
process.env.BENCH_SCHEMA = schema;
let finished = 0;
const stop = await subject.work(connectionString, schema, JSON.parse(settings) as RunSettings, (n) => {
  finished += n;
});
process.send?.({ type: 'ready', rss: process.memoryUsage().rss });
// Units finished so far, for the parent's progress (it polls the table only to end the run).
let reported = 0;
setInterval(() => {
  if (finished === reported) return;
  reported = finished;
  process.send?.({ type: 'finished', units: finished });
}, 20).unref();
// The resident set as the run goes (workload 5 prints its trend).
setInterval(() => process.send?.({ type: 'rss', rss: process.memoryUsage().rss }), 500).unref();
process.on('message', (m: { type?: string }) => {
  if (m.type !== 'stop') return;
  void stop().then(
    () => {
      process.send?.({ type: 'stopped', rss: process.memoryUsage().rss }, () => process.exit(0));
    },
    (error: unknown) => {
      process.stderr.write(`${name}: stop failed: ${String(error)}\n`);
      process.exit(1);
    },
  );
});
