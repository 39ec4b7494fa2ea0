import { randomBytes } from "node:crypto";
import { open, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
} from "../../sdk/crypto/index.js";
import { type Timing, table, timeOps, us } from "./measure.js";
import { MiB, type Plan } from "./plan.js";

/** 3. Attachments: in memory and file to file. */

export async function attachments(root: string, p: Plan, mark: (section: string) => void) {
  // Streaming first, from files written in 1 MiB chunks, so its memory is not hidden by the
  // in-memory runs' buffers (the peak RSS only grows).
  const files = new Map<number, { input: string; encrypt: Timing; decrypt: Timing }>();
  for (const [size, iterations] of p.attachments) {
    const input = join(root, `attachment-${size}`);
    const handle = await open(input, "w");
    for (let left = size; left > 0; left -= MiB) await handle.write(randomBytes(Math.min(MiB, left)));
    await handle.close();
    let secrets = await encryptAttachmentFile(input, `${input}.enc`);
    const encrypt = await timeOps(iterations, 1, async () => {
      secrets = await encryptAttachmentFile(input, `${input}.enc`);
    });
    const decrypt = await timeOps(iterations, 1, () =>
      decryptAttachmentFile(`${input}.enc`, `${input}.out`, secrets.key, secrets.digest),
    );
    files.set(size, { input, encrypt, decrypt });
  }
  mark("attachments, streaming");
  const rows = [];
  for (const [size, iterations] of p.attachments) {
    const file = files.get(size)!;
    const plain = await readFile(file.input);
    let enc = encryptAttachment(plain);
    const memEncrypt = await timeOps(iterations, 1, async () => {
      enc = encryptAttachment(plain);
    });
    const memDecrypt = await timeOps(iterations, 1, async () =>
      decryptAttachment(enc.ciphertext, enc.key, enc.digest),
    );
    rows.push({ size, memEncrypt, memDecrypt, fileEncrypt: file.encrypt, fileDecrypt: file.decrypt });
  }
  mark("attachments, in memory");
  return rows;
}

export function reportAttachments(rows: Awaited<ReturnType<typeof attachments>>): void {
  const rate = (size: number, t: Timing) => `${(size / t.median).toFixed(0)} MB/s`;
  const cells = (size: number, t: Timing) => [`${us(t.median)} (${t.n})`, rate(size, t)];
  table(
    "Attachments (AES-256-GCM + SHA-256 digest)",
    [
      "size",
      "memory: encrypt",
      "MB/s",
      "memory: decrypt",
      "MB/s",
      "file: encrypt",
      "MB/s",
      "file: decrypt",
      "MB/s",
    ],
    rows.map((r) => [
      `${r.size / MiB} MiB`,
      ...cells(r.size, r.memEncrypt),
      ...cells(r.size, r.memDecrypt),
      ...cells(r.size, r.fileEncrypt),
      ...cells(r.size, r.fileDecrypt),
    ]),
    "Median (n). MB/s = 10^6 plaintext bytes per second. Decrypt checks the digest first, then " +
      "decrypts and authenticates. File to file: streamed, written to a temporary file, fsynced, " +
      "renamed; the input is in the page cache (just written).",
  );
}
