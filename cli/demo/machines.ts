/** The demo's workload: an order pipeline with a flaky payment step, and a receipt job. */
import { z } from 'zod';
import { defineJob, defineMachine, done, next, retry } from '../../index.js';

export const order = defineMachine({
  module: import.meta.url,
  name: 'demo-order',
  queue: 'orders',
  state: z.object({ order: z.number().int(), amount: z.number(), charged: z.boolean().default(false) }),
  initial: 'reserve',
  backoff: () => 10,
  steps: {
    reserve: (s) => next('charge', s),
    // One payment in five is declined once and retried: the retry path is visible in the summary.
    charge: (s, ctx) =>
      s.order % 5 === 0 && ctx.attempt === 0 ? retry(s, 20) : next('ship', { ...s, charged: true }),
    ship: (s) => done({ order: s.order, amount: s.amount }),
  },
});

export const receipt = defineJob({
  module: import.meta.url,
  name: 'demo-receipt',
  queue: 'mail',
  args: z.object({ order: z.number().int() }),
  perform: (args) => ({ sent: `receipt-${args.order}` }),
});
