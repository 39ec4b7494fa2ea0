import type { ProfileStorage } from "./port.js";

// The shapes the SDK keeps in a ProfileStorage: JSON documents (the profile's state, the Signal
// identities) and sets of binary records (sessions, prekeys, plaintexts), all held in memory and
// written through, one write per key at a time (the port's promise to engines).

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Copies bytes into a fresh ArrayBuffer-backed array (libsignal refuses shared or pooled buffers). */
export function toBytes(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(data.byteLength);
  out.set(data);
  return out;
}

/**
 * Writes one key from a snapshot function, one write at a time. Calls made while a write runs
 * share the next write, which takes its snapshot when it starts and so includes all of them.
 */
export class SerialWrite {
  private last: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;

  constructor(
    private readonly storage: ProfileStorage,
    /** The key replaced by each write. */
    private readonly key: string,
    /** The value to write, taken when a write starts. */
    private readonly snapshot: () => string | Uint8Array,
  ) {}

  /** Resolves when the writes started so far have finished (failed or not). */
  settled(): Promise<void> {
    return this.last.then(
      () => {},
      () => {},
    );
  }

  /** Writes the current snapshot; resolves once it (or a later snapshot) is durable. */
  write(): Promise<void> {
    if (this.queued !== undefined) return this.queued;
    const next = this.last
      .catch(() => {})
      .then(() => {
        this.queued = undefined;
        const value = this.snapshot();
        return this.storage.put([[this.key, typeof value === "string" ? encoder.encode(value) : value]]);
      });
    this.queued = next;
    this.last = next;
    return next;
  }
}

/** Reads a JSON document, or undefined when the key has none. */
export async function readJson<T>(storage: ProfileStorage, key: string): Promise<T | undefined> {
  const raw = await storage.get(key);
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(decoder.decode(raw)) as T;
  } catch {
    throw new Error(`${key} in ${storage.location} is not valid JSON`);
  }
}

/**
 * One JSON document written atomically, one write at a time; a write snapshots the value when it
 * starts, so writes requested while one runs are carried by the next.
 */
export class JsonDoc<T> {
  private readonly writer: SerialWrite;

  private constructor(
    storage: ProfileStorage,
    key: string,
    /** The current value; mutate it, then call save(). */
    public value: T,
  ) {
    this.writer = new SerialWrite(storage, key, () => `${JSON.stringify(this.value)}\n`);
  }

  static async open<T>(storage: ProfileStorage, key: string, initial: () => T): Promise<JsonDoc<T>> {
    const value = await readJson<T>(storage, key);
    return new JsonDoc(storage, key, value === undefined ? initial() : value);
  }

  /** Writes the current value; resolves once it (or a later snapshot) is durable. */
  save(): Promise<void> {
    return this.writer.write();
  }
}

/**
 * A folder of small binary records under one key prefix (`signal/sessions/`), all held in memory.
 * Record names may be any string: each becomes the hex of its UTF-8 bytes in the storage key,
 * safe for every engine and every file system, case-insensitive ones included. Writes to one
 * record run one at a time in call order, so a later write never loses to an earlier one.
 */
export class RecordSet {
  private readonly cache = new Map<string, Uint8Array<ArrayBuffer>>();
  private readonly chains = new Map<string, Promise<void>>();

  private constructor(
    private readonly storage: ProfileStorage,
    /** The folder, ending in "/". */
    readonly prefix: string,
  ) {}

  /** Loads every record under the prefix. */
  static async open(storage: ProfileStorage, prefix: string): Promise<RecordSet> {
    const records = new RecordSet(storage, prefix);
    for (const [key, value] of await storage.list(prefix)) {
      const name = decodeName(key.slice(prefix.length));
      if (name !== undefined) records.cache.set(name, toBytes(value));
    }
    return records;
  }

  get(name: string): Uint8Array<ArrayBuffer> | undefined {
    return this.cache.get(name);
  }

  has(name: string): boolean {
    return this.cache.has(name);
  }

  keys(): string[] {
    return [...this.cache.keys()];
  }

  /** Stores records; resolves once they are durable. */
  put(entries: Array<[name: string, value: Uint8Array]>): Promise<void> {
    const writes: Array<[string, Uint8Array]> = [];
    for (const [name, value] of entries) {
      const copy = toBytes(value);
      this.cache.set(name, copy);
      writes.push([this.keyOf(name), copy]);
    }
    return this.serialize(
      entries.map(([name]) => name),
      () => this.storage.put(writes),
    );
  }

  /** Deletes records; resolves once the deletion is durable. */
  delete(names: string[]): Promise<void> {
    for (const name of names) this.cache.delete(name);
    return this.serialize(names, () => this.storage.delete(names.map((n) => this.keyOf(n))));
  }

  private keyOf(name: string): string {
    return `${this.prefix}${Buffer.from(name, "utf8").toString("hex")}`;
  }

  private serialize(names: string[], run: () => Promise<void>): Promise<void> {
    const before = names.map((n) => this.chains.get(n) ?? Promise.resolve());
    const next = Promise.all(before.map((p) => p.catch(() => {}))).then(run);
    for (const name of names) {
      const mine = next.catch(() => {});
      this.chains.set(name, mine);
      void mine.then(() => {
        if (this.chains.get(name) === mine) this.chains.delete(name);
      });
    }
    return next;
  }
}

function decodeName(name: string): string | undefined {
  if (!/^(?:[0-9a-f]{2})+$/.test(name)) return undefined;
  return Buffer.from(name, "hex").toString("utf8");
}
