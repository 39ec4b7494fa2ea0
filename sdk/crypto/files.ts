import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { isErrno, syncDirectory } from "../profile.js";

export { isErrno };

// The same discipline as sdk/profile.ts (temporary file, fsync, rename, fsync of the directory),
// for binary records and for batches: a batch of records shares one directory fsync, which is what
// makes generating a hundred prekeys cheap.

const TMP_MARK = ".tmp-";

/** Copies bytes into a fresh ArrayBuffer-backed array (libsignal refuses shared or pooled buffers). */
export function toBytes(data: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(data.byteLength);
  out.set(data);
  return out;
}

/** Creates a directory (and its parents) and makes its entry in the parent durable. */
export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await syncDirectory(dirname(dir));
}

async function writeTemp(path: string, data: Uint8Array | string): Promise<string> {
  const tmp = `${path}${TMP_MARK}${process.pid}-${randomBytes(4).toString("hex")}`;
  const file = await open(tmp, "w", 0o600);
  try {
    await file.writeFile(data);
    await file.sync();
  } finally {
    await file.close();
  }
  return tmp;
}

/**
 * Replaces several files of one directory atomically each (a crash leaves every file either old or
 * new), durable when the promise resolves.
 */
export async function writeFilesAtomic(dir: string, files: Array<[name: string, data: Uint8Array | string]>) {
  if (files.length === 0) return;
  const temps: Array<[tmp: string, path: string]> = [];
  try {
    for (const [name, data] of files) {
      const path = join(dir, name);
      temps.push([await writeTemp(path, data), path]);
    }
    for (const [tmp, path] of temps) await rename(tmp, path);
  } catch (err) {
    for (const [tmp] of temps) await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDirectory(dir);
}

/** Deletes files of one directory, durable when the promise resolves; missing files are ignored. */
export async function removeFiles(dir: string, names: string[]): Promise<void> {
  if (names.length === 0) return;
  for (const name of names) {
    await unlink(join(dir, name)).catch((err: unknown) => {
      if (!isErrno(err, "ENOENT")) throw err;
    });
  }
  await syncDirectory(dir);
}

/** Reads a file, or undefined when it does not exist. */
export async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if (isErrno(err, "ENOENT")) return undefined;
    throw err;
  }
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
      if (name.includes(TMP_MARK)) {
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
  private last: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;

  private constructor(
    private readonly path: string,
    /** The current value; mutate it, then call save(). */
    public value: T,
  ) {}

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
    if (this.queued !== undefined) return this.queued;
    const next = this.last
      .catch(() => {})
      .then(() => {
        this.queued = undefined;
        const dir = dirname(this.path);
        const name = this.path.slice(dir.length + 1);
        return writeFilesAtomic(dir, [[name, `${JSON.stringify(this.value)}\n`]]);
      });
    this.queued = next;
    this.last = next;
    return next;
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
