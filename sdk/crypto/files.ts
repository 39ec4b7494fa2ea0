import { readdir, readFile, unlink } from "node:fs/promises";
import { join } from "node:path";
import {
  ensureDir,
  isErrno,
  isLeftover,
  readOptional,
  removeFiles,
  SerialFile,
  writeFilesAtomic,
} from "../durable-file.js";

// Re-exported: the Signal stores and earlier callers import them from this module.
export { ensureDir, isErrno, readOptional, removeFiles, writeFilesAtomic };

// Durable writes go through sdk/durable-file.ts (temporary file, fsync, rename, fsync of the
// directory); a batch of records shares one directory fsync, which is what makes generating a
// hundred prekeys cheap.

/** Copies bytes into a fresh ArrayBuffer-backed array (libsignal refuses shared or pooled buffers). */
export function toBytes(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(data.byteLength);
  out.set(data);
  return out;
}

/**
 * A directory of small binary records, one file per key, all held in memory. Writes to one key
 * run one at a time in call order, so a later write never loses to an earlier one.
 */
export class RecordDir {
  private readonly cache = new Map<string, Uint8Array<ArrayBuffer>>();
  private readonly chains = new Map<string, Promise<void>>();

  private constructor(
    /** The directory. */
    readonly dir: string,
  ) {}

  /** Opens (creating) the directory and loads every record; leftovers of interrupted writes go. */
  static async open(dir: string): Promise<RecordDir> {
    await ensureDir(dir);
    const records = new RecordDir(dir);
    for (const name of await readdir(dir)) {
      if (isLeftover(name)) {
        await unlink(join(dir, name)).catch(() => {});
        continue;
      }
      const key = decodeName(name);
      if (key === undefined) continue;
      records.cache.set(key, toBytes(await readFile(join(dir, name))));
    }
    return records;
  }

  get(key: string): Uint8Array<ArrayBuffer> | undefined {
    return this.cache.get(key);
  }

  has(key: string): boolean {
    return this.cache.has(key);
  }

  keys(): string[] {
    return [...this.cache.keys()];
  }

  /** Stores records; resolves once they are durable. */
  put(entries: Array<[key: string, value: Uint8Array]>): Promise<void> {
    const files: Array<[string, Uint8Array]> = [];
    for (const [key, value] of entries) {
      const copy = toBytes(value);
      this.cache.set(key, copy);
      files.push([encodeName(key), copy]);
    }
    return this.serialize(
      entries.map(([key]) => key),
      () => writeFilesAtomic(this.dir, files),
    );
  }

  /** Deletes records; resolves once the deletion is durable. */
  delete(keys: string[]): Promise<void> {
    for (const key of keys) this.cache.delete(key);
    return this.serialize(keys, () =>
      removeFiles(
        this.dir,
        keys.map((k) => encodeName(k)),
      ),
    );
  }

  private serialize(keys: string[], run: () => Promise<void>): Promise<void> {
    const before = keys.map((k) => this.chains.get(k) ?? Promise.resolve());
    const next = Promise.all(before.map((p) => p.catch(() => {}))).then(run);
    for (const key of keys) {
      const mine = next.catch(() => {});
      this.chains.set(key, mine);
      void mine.then(() => {
        if (this.chains.get(key) === mine) this.chains.delete(key);
      });
    }
    return next;
  }
}

/**
 * One JSON document written atomically, one write at a time; a write snapshots the value when it
 * starts, so writes requested while one runs are carried by the next.
 */
export class JsonDoc<T> {
  private readonly file: SerialFile;

  private constructor(
    path: string,
    /** The current value; mutate it, then call save(). */
    public value: T,
  ) {
    this.file = new SerialFile(path, () => `${JSON.stringify(this.value)}\n`);
  }

  static async open<T>(path: string, initial: () => T): Promise<JsonDoc<T>> {
    const raw = await readOptional(path);
    if (raw === undefined) return new JsonDoc(path, initial());
    try {
      return new JsonDoc(path, JSON.parse(raw.toString("utf8")) as T);
    } catch {
      throw new Error(`signal store file ${path} is not valid JSON`);
    }
  }

  /** Writes the current value; resolves once it (or a later snapshot) is durable. */
  save(): Promise<void> {
    return this.file.write();
  }
}

// Keys become hex file names: safe on every file system, case-insensitive ones included.
function encodeName(key: string): string {
  return Buffer.from(key, "utf8").toString("hex");
}

function decodeName(name: string): string | undefined {
  if (!/^(?:[0-9a-f]{2})+$/.test(name)) return undefined;
  return Buffer.from(name, "hex").toString("utf8");
}
