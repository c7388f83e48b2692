/**
 * The services only the leader runs (the reaper and GC today; the stager and bucket
 * housekeeping later): started together when the node is elected, stopped together when it
 * resigns.
 *
 * Each election opens a new term. `resign(term)` stops the services only if `term` is still
 * the current one, so a resignation that arrives late (a dead session's error reported after
 * the node was elected again on a fresh one) cannot stop the services of a newer term — the
 * idea of River's `queue_maintainer_leader.go`. A start that follows a stop nobody awaited is
 * safe too: each `PeriodicService` opens an epoch of its own on every start and stop.
 */
import type { Service } from '../runtime/service.js';

export class LeaderServices {
  readonly #services: readonly Service[];
  #term = 0;
  #running = false;

  constructor(services: readonly Service[]) {
    this.#services = services;
  }

  /** Whether a term is running. */
  get running(): boolean {
    return this.#running;
  }

  /** Starts every service under a new term; returns the term. */
  elect(): number {
    this.#term++;
    this.#running = true;
    for (const s of this.#services) s.start();
    return this.#term;
  }

  /**
   * Stops every service if `term` is the current one (else nothing: a newer term runs).
   * The services are told at once; the promise waits for their rounds in flight.
   */
  async resign(term: number): Promise<void> {
    if (term !== this.#term || !this.#running) return;
    this.#running = false;
    await Promise.all(this.#services.map((s) => s.stop()));
  }

  /** Stops whatever term runs (idempotent). */
  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#services.map((s) => s.stop()));
  }
}
