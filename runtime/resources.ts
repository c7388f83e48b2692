/**
 * Live long-lived resources of this process (clients, nodes, thread pools, listeners), so
 * tests can assert that everything they started was stopped. Tracking is a set insert and
 * delete per resource lifetime: free on any hot path.
 */
export type ResourceKind = 'client' | 'node' | 'thread-pool' | 'listener';

const live = new Map<object, { kind: ResourceKind; label: string }>();

export function trackResource(resource: object, kind: ResourceKind, label: string): () => void {
  live.set(resource, { kind, label });
  return () => live.delete(resource);
}

/** What is open right now, e.g. `['node node-1', 'thread-pool default']`. */
export function liveResources(): string[] {
  return [...live.values()].map((r) => `${r.kind} ${r.label}`);
}
