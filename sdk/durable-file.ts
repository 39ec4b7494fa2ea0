import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";

// The SDK's one way of writing files that must survive a crash or a power cut: write a temporary
// file, fsync it, rename it over the target, fsync the directory so the rename itself is durable.
// The file storage engine (sdk/storage/file.ts), which keeps the profile and the Signal stores, and
// the CLI's downloads write through here. The SDK ships as its own package, so it does not share services/media's copy.

/** Marks the temporary files of interrupted writes (the target files are intact). */
const TMP_MARK = ".tmp-";

/** True for the name of a temporary file that an interrupted write left behind. */
export function isLeftover(name: string): boolean {
  return name.includes(TMP_MARK);
}

/** Deletes the leftovers of interrupted writes in a directory (best effort). */
export async function removeLeftovers(dir: string, names?: readonly string[]): Promise<void> {
  for (const name of names ?? (await readdir(dir))) {
    if (isLeftover(name)) await unlink(join(dir, name)).catch(() => {});
  }
}

/** True for a Node system error with one of the given codes. */
export function isErrno(err: unknown, ...codes: string[]): boolean {
  return (
    typeof err === "object" && err !== null && codes.includes((err as { code?: unknown }).code as string)
  );
}

/** Makes a directory's entries (a rename, an unlink) durable. */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(dir, "r");
    await handle.sync();
  } catch (err) {
    // Some platforms (Windows) cannot open or fsync directories; the rename is still atomic there.
    if (!isErrno(err, "EISDIR", "EPERM", "EINVAL", "EBADF")) throw err;
  } finally {
    await handle?.close();
  }
}

/** Creates a directory (and its parents) and makes its entry in the parent durable. */
export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await syncDirectory(dirname(dir));
}

/** Writes data to a fresh temporary file beside `path` and fsyncs it; returns its path. */
async function writeTemp(path: string, data: Uint8Array | string, mode: number): Promise<string> {
  const tmp = `${path}${TMP_MARK}${process.pid}-${randomBytes(4).toString("hex")}`;
  const file = await open(tmp, "w", mode);
  try {
    await file.writeFile(data);
    await file.sync();
  } finally {
    await file.close();
  }
  return tmp;
}

/**
 * Replaces a file so that a crash leaves either the old or the new content, never a mix; durable
 * when the promise resolves.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = await writeTemp(path, data, mode);
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDirectory(join(path, ".."));
}

/**
 * Replaces several files of one directory atomically each (a crash leaves every file either old or
 * new), durable when the promise resolves. The batch shares one directory fsync, which is what
 * makes writing a hundred prekeys cheap.
 */
export async function writeFilesAtomic(
  dir: string,
  files: Array<[name: string, data: Uint8Array | string]>,
): Promise<void> {
  if (files.length === 0) return;
  const temps: Array<[tmp: string, path: string]> = [];
  try {
    for (const [name, data] of files) {
      const path = join(dir, name);
      temps.push([await writeTemp(path, data, 0o600), path]);
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
