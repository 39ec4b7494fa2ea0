import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * Searches raw bytes for secrets: a marker in UTF-8, in UTF-16LE, and in base64 and base64url at
 * each of the three byte alignments it can have inside a longer base64 text.
 */

/** One encoding of a marker and the bytes that show it. */
export interface MarkerForm {
  encoding: string;
  bytes: Buffer;
}

/**
 * The base64 text that must appear wherever `marker` is base64-encoded as part of a longer input:
 * for each alignment (the marker starting at input offset 0, 1 or 2 mod 3), the characters of the
 * whole 3-byte groups made of marker bytes only.
 */
export function base64Forms(marker: Buffer): string[] {
  const forms: string[] = [];
  for (let alignment = 0; alignment < 3; alignment++) {
    const skip = (3 - alignment) % 3;
    const whole = marker.subarray(skip, skip + Math.floor((marker.length - skip) / 3) * 3);
    forms.push(whole.toString("base64"));
  }
  return forms;
}

/** Every form of a marker this module searches for. */
export function markerForms(marker: string): MarkerForm[] {
  const utf8 = Buffer.from(marker, "utf8");
  const forms: MarkerForm[] = [
    { encoding: "utf8", bytes: utf8 },
    { encoding: "utf16le", bytes: Buffer.from(marker, "utf16le") },
  ];
  base64Forms(utf8).forEach((b64, alignment) => {
    forms.push({ encoding: `base64@${alignment}`, bytes: Buffer.from(b64, "latin1") });
    const url = b64.replace(/\+/g, "-").replace(/\//g, "_");
    if (url !== b64) forms.push({ encoding: `base64url@${alignment}`, bytes: Buffer.from(url, "latin1") });
  });
  return forms;
}

/** A place a marker was found. */
export interface Finding {
  marker: string;
  encoding: string;
  where: string;
  offset: number;
}

/** The findings of any of the markers in one buffer. */
export function findMarkers(bytes: Uint8Array, where: string, markers: readonly string[]): Finding[] {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const found: Finding[] = [];
  for (const marker of markers) {
    for (const form of markerForms(marker)) {
      const offset = buffer.indexOf(form.bytes);
      if (offset >= 0) found.push({ marker, encoding: form.encoding, where, offset });
    }
  }
  return found;
}

/** Every regular file under a directory, recursively (symbolic links are not followed). */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(path)));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

/** A file's path and its bytes. */
export interface FileRead {
  path: string;
  bytes: Buffer;
}

/**
 * Reads every regular file under the directories. A live process may be writing there: a file
 * listed and gone before it is read (an atomic write's temporary file, renamed over the real
 * one) makes the whole scan start again, since what it held may now be in a file already read.
 */
export async function readFilesUnder(...dirs: string[]): Promise<FileRead[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      const out: FileRead[] = [];
      for (const dir of dirs) {
        for (const path of await filesUnder(dir)) out.push({ path, bytes: await readFile(path) });
      }
      return out;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" || attempt >= 10) throw err;
    }
  }
}

/** Reads every file under a directory and returns where the markers are, and how much was read. */
export async function scanDirectory(
  dir: string,
  markers: readonly string[],
): Promise<{ findings: Finding[]; files: number; bytes: number }> {
  const findings: Finding[] = [];
  let bytes = 0;
  const files = await readFilesUnder(dir);
  for (const file of files) {
    bytes += file.bytes.length;
    findings.push(...findMarkers(file.bytes, file.path, markers));
  }
  return { findings, files: files.length, bytes };
}
