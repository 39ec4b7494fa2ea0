import { open, rename, unlink } from "node:fs/promises";
import { dirname } from "node:path";

// The services' one way of writing files that must survive a crash or a power cut. A rename is
// atomic but not durable until the directory holding it is fsync'd, and the renamed file's bytes
// are not durable until the file itself is: both steps are easy to forget, so they live here.
// (The SDK ships as its own package and keeps its own copy, sdk/durable-file.ts.)

/**
 * Replaces `path` so that a crash leaves either the old or the new content, never a mix: writes
 * `tmp` (which must not exist, and must be on the same file system), fsyncs it, renames it over
 * `path`, then fsyncs the directory. `tmp` is removed if the rename fails.
 */
export async function writeFileDurably(
  path: string,
  data: string | Uint8Array,
  tmp: string,
  mode = 0o600,
): Promise<void> {
  const file = await open(tmp, "wx", mode);
  try {
    await file.writeFile(data);
    await file.sync();
  } finally {
    await file.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await syncDirectory(dirname(path));
}

/** Makes a file's written bytes durable (for files written by a stream, before they are linked in). */
export async function syncFile(path: string): Promise<void> {
  const handle = await open(path, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a directory's entries (a rename, a link, an unlink) durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
