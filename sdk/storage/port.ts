// The storage port: where a device keeps its profile (credentials, cursors, outbox), its Signal
// state (keys, sessions, sender keys) and the plaintexts it decrypted. The SDK ships two engines,
// files in a directory (./file.ts, the default) and memory (./memory.ts); an app that keeps its
// data in its own database implements this interface over a table and passes it as
// `OpenOptions.storage`. One conformance suite (./conformance.ts) checks every engine.

/**
 * A small durable key-value store for one device. Keys are paths of segments joined by "/"
 * (see isStorageKey); values are bytes the engine stores as given.
 *
 * What the SDK relies on:
 *
 * - **Durable on resolve.** When `put` or `delete` resolves, the change survives a crash or a
 *   power cut (the SDK acknowledges entries to the server and decrypts Signal messages, which can
 *   be done only once, right after).
 * - **Atomic per entry.** A crash leaves each entry either as it was or as written, never a mix. An
 *   engine may apply a whole batch as one transaction; the SDK does not need it to.
 * - **Reads see every write that resolved**, in this process. The SDK keeps what it read in memory
 *   and reads each key once when it opens, so reads need not be fast.
 * - **One writer per key at a time.** The SDK never has two writes of the same key in flight, so
 *   an engine need not order them; writes of different keys may overlap.
 */
export interface ProfileStorage {
  /** Where the data lives, for messages: a directory, "memory", "sqlite:app.db#alice". */
  readonly location: string;

  /** The value of a key, or undefined when it has none. */
  get(key: string): Promise<Uint8Array | undefined>;

  /**
   * Every entry whose key starts with `prefix`, which is "" (everything) or ends with "/" (a
   * folder and everything below it), in any order.
   */
  list(prefix: string): Promise<Array<[key: string, value: Uint8Array]>>;

  /** Sets keys to values (replacing what they held); resolves once every entry is durable. */
  put(entries: ReadonlyArray<readonly [key: string, value: Uint8Array]>): Promise<void>;

  /** Removes keys (missing ones are ignored); resolves once the removal is durable. */
  delete(keys: readonly string[]): Promise<void>;

  /**
   * Takes the profile for one client: `connect()` calls it so that two clients never stream as the
   * same device and overwrite each other's cursors and Signal sessions. Rejects when another live
   * holder has it. An engine whose app guarantees one client per profile may return a lock that
   * does nothing.
   */
  lock(): Promise<StorageLock>;
}

/** A held profile lock. */
export interface StorageLock {
  /** Lets the next client take the profile. */
  release(): Promise<void>;
}

/**
 * Keys the SDK uses: segments of letters, digits, "_", "-" and "." joined by "/", none empty or
 * starting with "." (engines that map keys to file names reserve those), at most 1,024 characters.
 * Examples: `credentials.json`, `signal/sessions/7535...`, `e2ee/plaintexts/72...`.
 */
export function isStorageKey(key: string): boolean {
  return key.length > 0 && key.length <= MAX_KEY_LENGTH && KEY.test(key);
}

/** Throws for a key isStorageKey refuses (engines call it before they touch anything). */
export function checkStorageKey(key: string): void {
  if (!isStorageKey(key)) throw new Error(`not a storage key: ${JSON.stringify(key.slice(0, 80))}`);
}

/** Throws for a list prefix that is neither "" nor a folder ending in "/". */
export function checkStoragePrefix(prefix: string): void {
  if (prefix !== "" && !(prefix.endsWith("/") && isStorageKey(prefix.slice(0, -1)))) {
    throw new Error(`not a storage folder prefix: ${JSON.stringify(prefix.slice(0, 80))}`);
  }
}

const MAX_KEY_LENGTH = 1024;
const SEGMENT = "[A-Za-z0-9_-][A-Za-z0-9_.-]*";
const KEY = new RegExp(`^${SEGMENT}(?:/${SEGMENT})*$`);
