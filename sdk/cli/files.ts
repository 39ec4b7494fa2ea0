import { randomBytes } from "node:crypto";
import { link, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { syncDirectory } from "../durable-file.js";

/**
 * Makes text that others wrote (messages, names, titles, file names) safe to print on one line:
 * an escape sequence must not recolour, move or retitle the reader's terminal, and a newline must
 * not start a line that looks like another message (`ok\n#55 [12:00:00] you: I agree`). C0
 * controls, newlines and tabs included, become their visible Control Pictures (a newline shows as
 * "␊"), DEL as "␡", C1 controls as U+FFFD, and the Unicode line and paragraph separators and the
 * bidirectional overrides and isolates (which can reorder what is shown) as `<U+XXXX>`.
 */
export function printable(text: string): string {
  return text.replace(
    // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
    /[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => {
      const code = c.charCodeAt(0);
      if (code < 0x20) return String.fromCharCode(0x2400 + code);
      if (code === 0x7f) return "\u2421";
      if (code <= 0x9f) return "\uFFFD";
      return `<U+${code.toString(16).toUpperCase().padStart(4, "0")}>`;
    },
  );
}

/**
 * A name to save a received file under, in the chosen directory: the sender picks the file name,
 * so it is cut to its last path component and stripped of control characters; "", "." and ".."
 * become the fallback.
 */
export function safeFileName(name: string, fallback: string): string {
  const last = name.split(/[/\\]/).at(-1) ?? "";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  const cleaned = last.replace(/[\x00-\x1f\x7f-\x9f]/g, "").trim();
  if (cleaned === "" || cleaned === "." || cleaned === "..") return fallback;
  // Most file systems take 255 bytes per name; keep the extension when cutting.
  if (Buffer.byteLength(cleaned) <= 255) return cleaned;
  const dot = cleaned.lastIndexOf(".");
  const ext = dot > 0 && cleaned.length - dot <= 16 ? cleaned.slice(dot) : "";
  let stem = cleaned.slice(0, cleaned.length - ext.length);
  while (Buffer.byteLength(stem + ext) > 255) stem = stem.slice(0, -1);
  return stem + ext;
}

/** A size for people: "812 bytes", "12.3 KiB", "4.0 MiB". */
export function formatBytes(bytes: bigint | number): string {
  const n = Number(bytes);
  if (n < 1024) return `${n} byte${n === 1 ? "" : "s"}`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** Quotes a command-line argument for a POSIX shell when it needs it. */
export function shellArg(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** True when something (a file, a directory) exists at the path. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/** True when the path is an existing directory. */
export async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/** The refusal to replace a file that exists, without --force. */
export class FileExistsError extends Error {
  constructor(readonly path: string) {
    super(`${path} already exists; choose another --out, or add --force to replace it`);
    this.name = "FileExistsError";
  }
}

/** A temporary name beside `path`, for a file that is moved into place once complete. */
export function partPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.part`);
}

/**
 * Moves a complete file (`part`, beside `path`) into place, durably. Without `overwrite` an
 * existing file is never replaced, not even one created while the download ran: the part is
 * hard-linked into place, which fails if the name is taken. The part is gone afterwards.
 */
export async function placeFile(part: string, path: string, overwrite: boolean): Promise<void> {
  try {
    if (overwrite) await rename(part, path);
    else await link(part, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new FileExistsError(path);
    throw err;
  } finally {
    await unlink(part).catch(() => {});
  }
  await syncDirectory(dirname(path));
}
