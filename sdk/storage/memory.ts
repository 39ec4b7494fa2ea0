import { checkStorageKey, checkStoragePrefix, type ProfileStorage, type StorageLock } from "./port.js";

/**
 * A profile kept in this process's memory: gone when the process ends. For tests, short-lived
 * bots and as the model of what an engine does (a database engine is this with a table behind
 * it). Values are copied in and out, so the caller's buffers are never shared with the store.
 */
export class MemoryStorage implements ProfileStorage {
  private readonly entries = new Map<string, Uint8Array>();
  private held = false;

  constructor(
    /** Names the store in messages. */
    readonly location = "memory",
  ) {}

  async get(key: string): Promise<Uint8Array | undefined> {
    checkStorageKey(key);
    const value = this.entries.get(key);
    return value === undefined ? undefined : new Uint8Array(value);
  }

  async list(prefix: string): Promise<Array<[key: string, value: Uint8Array]>> {
    checkStoragePrefix(prefix);
    const out: Array<[string, Uint8Array]> = [];
    for (const [key, value] of this.entries)
      if (key.startsWith(prefix)) out.push([key, new Uint8Array(value)]);
    return out;
  }

  async put(entries: ReadonlyArray<readonly [key: string, value: Uint8Array]>): Promise<void> {
    // Every key is checked before anything is stored: a bad batch changes nothing.
    for (const [key] of entries) checkStorageKey(key);
    // new Uint8Array(view) copies; a Buffer's slice() would not.
    for (const [key, value] of entries) this.entries.set(key, new Uint8Array(value));
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) checkStorageKey(key);
    for (const key of keys) this.entries.delete(key);
  }

  async lock(): Promise<StorageLock> {
    if (this.held) throw new Error(`profile ${this.location} is in use by another client in this process`);
    this.held = true;
    let released = false;
    return {
      release: async () => {
        if (released) return;
        released = true;
        this.held = false;
      },
    };
  }
}
