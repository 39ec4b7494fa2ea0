import { mkdir, open, readdir, readFile, unlink } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import {
  isErrno,
  isLeftover,
  readOptional,
  removeLeftovers,
  syncDirectory,
  writeFilesAtomic,
} from "../durable-file.js";
import {
  checkStorageKey,
  checkStoragePrefix,
  isStorageKey,
  type ProfileStorage,
  type StorageLock,
} from "./port.js";

/** The lock file in the profile directory (not a key: list never returns it). */
const LOCK = "profile.lock";

/**
 * The default engine: one file per key under a directory (`signal/sessions/<hex>` is the file
 * `<dir>/signal/sessions/<hex>`), so a profile is a folder a user can back up or delete. Every
 * write goes through sdk/durable-file.ts (temporary file, fsync, rename, fsync of the directory);
 * a batch shares one directory fsync per folder, which is what makes a hundred prekeys cheap.
 * Folders are made with mode 0700 and files with 0600. The leftovers of writes a crash
 * interrupted are removed from a folder the first time this engine reads or writes it.
 */
export class FileStorage implements ProfileStorage {
  /** Folders whose leftovers were removed (or that were found missing). */
  private readonly cleaned = new Map<string, Promise<void>>();
  /** Folders known to exist, durably. */
  private readonly made = new Map<string, Promise<void>>();

  constructor(
    /** The profile directory. */
    readonly dir: string,
  ) {}

  get location(): string {
    return this.dir;
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const path = this.pathOf(key);
    await this.clean(dirname(path));
    const raw = await readOptional(path);
    return raw === undefined ? undefined : new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  }

  async list(prefix: string): Promise<Array<[key: string, value: Uint8Array]>> {
    checkStoragePrefix(prefix);
    const out: Array<[string, Uint8Array]> = [];
    await this.walk(
      prefix === "" ? this.dir : join(this.dir, ...prefix.slice(0, -1).split("/")),
      prefix,
      out,
    );
    return out;
  }

  async put(entries: ReadonlyArray<readonly [key: string, value: Uint8Array]>): Promise<void> {
    const byDir = new Map<string, Array<[string, Uint8Array]>>();
    for (const [key, value] of entries) {
      const path = this.pathOf(key);
      const dir = dirname(path);
      const files = byDir.get(dir) ?? [];
      byDir.set(dir, files);
      files.push([path.slice(dir.length + 1), value]);
    }
    await Promise.all(
      [...byDir].map(async ([dir, files]) => {
        await this.make(dir);
        await writeFilesAtomic(dir, files);
      }),
    );
  }

  async delete(keys: readonly string[]): Promise<void> {
    const byDir = new Map<string, string[]>();
    for (const key of keys) {
      const path = this.pathOf(key);
      const dir = dirname(path);
      const names = byDir.get(dir) ?? [];
      byDir.set(dir, names);
      names.push(path.slice(dir.length + 1));
    }
    await Promise.all(
      [...byDir].map(async ([dir, names]) => {
        let removed = false;
        for (const name of names) {
          try {
            await unlink(join(dir, name));
            removed = true;
          } catch (err) {
            if (!isErrno(err, "ENOENT", "ENOTDIR")) throw err;
          }
        }
        if (removed) await syncDirectory(dir);
      }),
    );
  }

  /**
   * A lock file holding this process's id. A lock left by a process that died is taken over; one
   * held by a live process (this one included) is refused.
   */
  async lock(): Promise<StorageLock> {
    await this.make(this.dir);
    const path = join(this.dir, LOCK);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const handle = await open(path, "wx", 0o600);
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        let released = false;
        return {
          release: async () => {
            if (released) return;
            released = true;
            await unlink(path).catch(() => {});
          },
        };
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      }
      const holder = Number.parseInt(await readFile(path, "utf8").catch(() => ""), 10);
      if (Number.isInteger(holder) && processAlive(holder)) {
        throw new Error(`profile ${this.dir} is in use by process ${holder}`);
      }
      await unlink(path).catch(() => {});
    }
    throw new Error(`could not lock profile ${this.dir}`);
  }

  private pathOf(key: string): string {
    checkStorageKey(key);
    // A key that looks like a temporary file would be taken for a leftover and deleted.
    if (isLeftover(key)) throw new Error(`not a storage key for files: ${JSON.stringify(key.slice(0, 80))}`);
    return join(this.dir, ...key.split("/"));
  }

  private async walk(dir: string, prefix: string, out: Array<[string, Uint8Array]>): Promise<void> {
    await this.clean(dir);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      if (isErrno(err, "ENOENT", "ENOTDIR")) return;
      throw err;
    }
    for (const name of names) {
      if (isLeftover(name) || (dir === this.dir && name === LOCK)) continue;
      const key = `${prefix}${name}`;
      if (!isStorageKey(key)) continue;
      const path = join(dir, name);
      let raw: Buffer;
      try {
        raw = await readFile(path);
      } catch (err) {
        if (isErrno(err, "EISDIR")) {
          await this.walk(path, `${key}/`, out);
          continue;
        }
        if (isErrno(err, "ENOENT")) continue;
        throw err;
      }
      out.push([key, new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength)]);
    }
  }

  /** Removes the leftovers of interrupted writes from a folder, once per folder and engine. */
  private clean(dir: string): Promise<void> {
    let done = this.cleaned.get(dir);
    if (done === undefined) {
      done = removeLeftovers(dir).catch((err: unknown) => {
        if (!isErrno(err, "ENOENT", "ENOTDIR")) throw err;
      });
      this.cleaned.set(dir, done);
      // A failure is retried by the next call rather than remembered.
      done.catch(() => this.cleaned.delete(dir));
    }
    return done;
  }

  /** Creates a folder and its missing parents, each made durable in its parent. */
  private make(dir: string): Promise<void> {
    let done = this.made.get(dir);
    if (done === undefined) {
      done = (async () => {
        const first = await mkdir(dir, { recursive: true, mode: 0o700 });
        if (first !== undefined) {
          // Every folder mkdir created, from the topmost down, is an entry in its parent.
          let path = first;
          await syncDirectory(dirname(path));
          for (const part of dir.slice(first.length).split(sep).filter(Boolean)) {
            path = join(path, part);
            await syncDirectory(dirname(path));
          }
        }
        await this.clean(dir);
      })();
      this.made.set(dir, done);
      done.catch(() => this.made.delete(dir));
    }
    return done;
  }
}

/** The file engine over a directory (what `profileDir` means in OpenOptions). */
export function fileStorage(dir: string): FileStorage {
  return new FileStorage(dir);
}

/** A directory becomes the file engine over it; an engine is used as it is. */
export function storageAt(place: string | ProfileStorage): ProfileStorage {
  return typeof place === "string" ? new FileStorage(place) : place;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, "EPERM");
  }
}
