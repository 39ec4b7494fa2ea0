import { stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Command } from "commander";
import type { SwitchboardClient } from "../../client.js";
import { AttachmentError } from "../../crypto/attachments.js";
import {
  exists,
  FileExistsError,
  formatBytes,
  isDirectory,
  partPath,
  placeFile,
  printable,
  safeFileName,
} from "../files.js";
import { type CliIo, run } from "../io.js";
import { resolveConversation } from "../names.js";
import { clientCommand, type GlobalOptions, positiveSeq } from "../options.js";
import { withClient } from "../session.js";

/** `download`: the files of an entry, verified and decrypted. */
export function registerDownload(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "download <with> <seq>",
    "save the files of entry #seq of a conversation (username or conversation id), verified and decrypted",
  )
    .option(
      "--out <path>",
      "where to write the file (default: the name it was sent with, in the current directory); a directory for several",
    )
    .option("--force", "replace a file that already exists")
    .action(
      run(io, async (target: string, seq: string, opts: GlobalOptions & { out?: string; force?: boolean }) =>
        withClient(opts, io, "content", (session) =>
          download(session.client, io, target, positiveSeq(seq), opts.out, opts.force === true),
        ),
      ),
    );
}

/** Saves entry #seq's files: every target checked first, each file verified before it is moved into place. */
async function download(
  client: SwitchboardClient,
  io: CliIo,
  target: string,
  seq: bigint,
  out: string | undefined,
  force: boolean,
): Promise<void> {
  const conversationId = await resolveConversation(client, target);
  const page = await client.getHistory(conversationId, { afterSeq: seq - 1n, limit: 1 });
  const entry = page.entries[0];
  if (entry === undefined || entry.seq !== seq) {
    throw new Error(`there is no entry #${seq} with ${target} (the last is #${page.lastSeq})`);
  }
  if (entry.redacted) throw new Error(`entry #${seq} was deleted for everyone, and its files with it`);
  if (entry.decodeError !== undefined) {
    throw new Error(
      `entry #${seq} cannot be decrypted on this device, so neither can its files: ${entry.decodeError.message}`,
    );
  }
  const files = entry.keysOnly ? [] : entry.attachments;
  if (files.length === 0) throw new Error(`entry #${seq} has no attachment`);

  // Every target is settled (and checked) before anything is downloaded.
  const paths: string[] = [];
  if (files.length === 1 && out !== undefined && !(await isDirectory(out))) {
    paths.push(out);
  } else {
    const dir = out ?? ".";
    if (out !== undefined && !(await isDirectory(out))) {
      throw new Error(`entry #${seq} has ${files.length} files: --out must be an existing directory`);
    }
    const taken = new Set<string>();
    for (const [i, a] of files.entries()) {
      let name = safeFileName(a.fileName, `attachment-${seq}${files.length > 1 ? `-${i + 1}` : ""}`);
      if (taken.has(name)) name = `${i + 1}-${name}`;
      taken.add(name);
      paths.push(out === undefined ? name : join(dir, name));
    }
  }
  for (const path of paths) {
    if (!(await isDirectory(dirname(path))))
      throw new Error(`cannot save ${path}: no directory ${dirname(path)}`);
    if (!force && (await exists(path))) throw new FileExistsError(path);
  }

  for (const [i, a] of files.entries()) {
    const path = paths[i]!;
    // Streamed into a part file beside the target, verified, then moved into place.
    const part = partPath(path);
    try {
      await client.downloadAttachment(conversationId, a, { path: part });
    } catch (err) {
      await unlink(part).catch(() => {});
      if (!(err instanceof AttachmentError)) throw err;
      const why =
        err.reason === "digest"
          ? "the downloaded bytes are not the ones the sender uploaded (tampered with or corrupted)"
          : err.reason === "authentication"
            ? "the bytes do not decrypt with the key the sender sent (tampered with)"
            : "the download is malformed";
      throw new Error(
        `${printable(a.fileName) || "the file"} of entry #${seq} failed verification: ${why}; nothing was written`,
      );
    }
    const { size } = await stat(part);
    await placeFile(part, path, force);
    io.out(`saved ${path} (${formatBytes(size)}; verified and decrypted)`);
  }
}
