/**
 * Bucket housekeeping: the leader's slot for the upkeep of token-bucket rate limits (SPEC
 * §7) — pruning buckets no instance has used for a while. Rate limits have not landed yet,
 * so a round has nothing to do and sends nothing; it is wired into `LeaderServices` now so
 * that the limits issue fills in `runOnce()` without touching the election.
 */
import type { Service } from '../runtime/service.js';

export class BucketHousekeeper implements Service {
  #running = false;

  get running(): boolean {
    return this.#running;
  }

  start(): void {
    this.#running = true;
  }

  /** One round: the buckets pruned (none until rate limits exist). */
  runOnce(): Promise<number> {
    return Promise.resolve(0);
  }

  stop(): Promise<void> {
    this.#running = false;
    return Promise.resolve();
  }
}
