/*
 * The push bus: how Center tells online devices, over their push channel, that their desired
 * state changed (a lock, a kill, a rollout reaching them), so they fetch it within a second
 * instead of at their next poll. Whoever changes what a device should run marks it in the
 * transaction (`markChanged`), and `transact` calls `notify` after the change is committed
 * (src/center/changes); the device API's push route subscribes per connected device.
 *
 * This in-process bus serves one Center process. Replicas on PostgreSQL relay notifications
 * between processes (LISTEN/NOTIFY) by wrapping it; the interface stays the same.
 */

/** A listener for one device; called with no arguments: the device re-reads its state. */
export type PushListener = () => void;

export interface PushBus {
  /**
   * Tells the listed devices (or every connected device, for `'all'`) that their desired state
   * changed. Never throws and never blocks: a device not connected simply learns at its next
   * poll. Call it after the change is committed, or a device may fetch the old state.
   */
  notify(deviceIds: readonly string[] | 'all'): void;
  /** Calls `listener` on each notification for `deviceId` until the returned function runs. */
  subscribe(deviceId: string, listener: PushListener): () => void;
  /**
   * Calls `listener` with every notification, for whoever caches per-device state (the
   * desired-state ETags); until the returned function runs.
   */
  watch(listener: (deviceIds: readonly string[] | 'all') => void): () => void;
  /** How many push connections are open (for metrics). */
  connections(): number;
}

/** The bus of a single Center process. */
export function createLocalPushBus(): PushBus {
  const listeners = new Map<string, Set<PushListener>>();
  const watchers = new Set<(deviceIds: readonly string[] | 'all') => void>();
  let open = 0;
  const call = (set: Set<PushListener> | undefined) => {
    for (const listener of set ?? []) {
      try {
        listener();
      } catch {
        // A listener's failure (a closed socket, say) is its connection's business.
      }
    }
  };
  return {
    notify(deviceIds) {
      // Watchers first: a device woken by its listener must not be answered from a stale cache.
      for (const watcher of watchers) watcher(deviceIds);
      if (deviceIds === 'all') {
        for (const set of listeners.values()) call(set);
        return;
      }
      for (const id of deviceIds) call(listeners.get(id));
    },
    subscribe(deviceId, listener) {
      let set = listeners.get(deviceId);
      if (set === undefined) listeners.set(deviceId, (set = new Set()));
      set.add(listener);
      open += 1;
      let subscribed = true;
      return () => {
        if (!subscribed) return;
        subscribed = false;
        open -= 1;
        set.delete(listener);
        if (set.size === 0 && listeners.get(deviceId) === set) listeners.delete(deviceId);
      };
    },
    watch(listener) {
      watchers.add(listener);
      return () => watchers.delete(listener);
    },
    connections: () => open,
  };
}
