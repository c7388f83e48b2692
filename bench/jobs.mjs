// The bench's job, in plain JavaScript on the compiled package (dist/), as a production
// deployment would run it: worker threads import it with no TypeScript loader involved.
import { z } from 'zod';
import { defineJob } from '../dist/index.js';

export const BENCH_QUEUE = 'bench';

/** Does nothing: what is measured is the engine's claim → thread → commit path. */
export const noop = defineJob({
  module: import.meta.url,
  name: 'bench-noop',
  queue: BENCH_QUEUE,
  args: z.object({ i: z.number().int() }),
  perform: () => null,
});
