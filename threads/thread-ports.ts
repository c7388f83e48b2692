/**
 * The ports a pool's worker threads post on, one per thread, each sent by its thread as it
 * starts (`ThreadPortMessage`, through piscina's worker channel). Messages on them name
 * their task and go to its handler. When a task settles its thread's port is drained
 * synchronously, so no result the worker posted before replying (or before it died) is left
 * behind: messages on one port arrive in order, but not in order with piscina's reply.
 */
import { type MessagePort, receiveMessageOnPort } from 'node:worker_threads';
import { type PortMessage, type ThreadPortMessage } from './protocol.js';

/** How long a settled task waits for its thread's port to arrive before giving up on it. */
const PORT_WAIT_MS = 5_000;

export class ThreadPorts {
  readonly #ports = new Map<number, MessagePort>();
  readonly #waiting = new Map<number, Array<() => void>>();
  readonly #handlers = new Map<number, (message: PortMessage) => void>();
  /** Threads whose port closed (they exited): every message they posted was delivered. */
  readonly #gone = new Set<number>();

  /** A thread's port arrived. */
  attach({ threadId, port }: ThreadPortMessage): void {
    this.#ports.set(threadId, port);
    port.on('message', (m: PortMessage) => this.#route(m));
    // Once the thread is gone and its messages delivered, the port closes.
    port.once('close', () => {
      if (this.#ports.get(threadId) === port) this.#ports.delete(threadId);
      this.#gone.add(threadId);
    });
    port.unref();
    for (const resolve of this.#waiting.get(threadId)?.splice(0) ?? []) resolve();
    this.#waiting.delete(threadId);
  }

  /** Messages for `task` go to `handler` until `forget`. */
  listen(task: number, handler: (message: PortMessage) => void): void {
    this.#handlers.set(task, handler);
  }

  forget(task: number): void {
    this.#handlers.delete(task);
  }

  /** Delivers every message the thread posted so far (waiting for its port if need be). */
  async drain(threadId: number): Promise<void> {
    let port = this.#ports.get(threadId);
    if (!port) {
      if (this.#gone.has(threadId)) return;
      await new Promise<void>((resolve) => {
        const list = this.#waiting.get(threadId) ?? [];
        list.push(resolve);
        this.#waiting.set(threadId, list);
        setTimeout(resolve, PORT_WAIT_MS).unref();
      });
      port = this.#ports.get(threadId);
      if (!port) return;
    }
    for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port))
      this.#route(m.message as PortMessage);
  }

  close(): void {
    for (const port of this.#ports.values()) port.close();
    this.#ports.clear();
    this.#handlers.clear();
  }

  #route(message: PortMessage): void {
    this.#handlers.get(message.task)?.(message);
  }
}
