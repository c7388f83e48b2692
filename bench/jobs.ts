/** The bench's job. Worker threads import this module by itself (via tsx), so keep it small. */
import { z } from 'zod';
import { defineJob } from '../index.js';

export const BENCH_QUEUE = 'bench';

/** Does nothing: what is measured is the engine's claim → thread → commit path. */
export const noop = defineJob({
  module: import.meta.url,
  name: 'bench-noop',
  queue: BENCH_QUEUE,
  args: z.object({ i: z.number().int() }),
  perform: () => null,
});
