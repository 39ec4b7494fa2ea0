import { Code, ConnectError } from "@connectrpc/connect";
import type { ClientEvents, Listener } from "../types.js";

/**
 * The client's events: listeners by kind. A listener that throws (or rejects) never stops the
 * client; its failure is reported as a non-fatal "error" event instead.
 */
export class Emitter {
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();

  /** Adds a listener. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  /** Resolves with the next event of a kind that matches the predicate. */
  waitFor<K extends keyof ClientEvents>(
    event: K,
    predicate: (value: ClientEvents[K]) => boolean = () => true,
  ): Promise<ClientEvents[K]> {
    return new Promise((resolve) => {
      const listener: Listener<ClientEvents[K]> = (value) => {
        if (!predicate(value)) return;
        this.off(event, listener);
        resolve(value);
      };
      this.on(event, listener);
    });
  }

  /** Calls the listeners without waiting for the promises they return. */
  emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        const result = (listener as Listener<ClientEvents[K]>)(value);
        if (result instanceof Promise) result.catch((err: unknown) => this.listenerFailed(event, err));
      } catch (err) {
        this.listenerFailed(event, err);
      }
    }
  }

  /** Calls the listeners one after another, each awaited (entries: the app's pace is the stream's). */
  async emitAndWait<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): Promise<void> {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        await (listener as Listener<ClientEvents[K]>)(value);
      } catch (err) {
        this.listenerFailed(event, err);
      }
    }
  }

  /** Reports a failure that does not stop the client, as a non-fatal "error" event. */
  reportError(err: unknown, code: Code = Code.Internal): void {
    this.emit("error", { error: ConnectError.from(err, code), fatal: false });
  }

  private listenerFailed(event: keyof ClientEvents, err: unknown): void {
    if (event === "error") return;
    this.reportError(err);
  }
}
