import { stat } from "node:fs/promises";
import { basename } from "node:path";
import type { Command } from "commander";
import { formatBytes, printable } from "../files.js";
import { downloadHint, type EntryView, formatEntry } from "../format.js";
import { type CliIo, describeError, run } from "../io.js";
import { ConversationLabels, Names, resolveConversation, userIdsFor } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { showKeyChanges, withClient } from "../session.js";

/** `send`: a text, or with --file an end-to-end encrypted file. */
export function registerSend(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "send <to> [text]",
    "send a message (with --file, an end-to-end encrypted file) to a username, or to a conversation id (g_..., d_...)",
  )
    .option("--file <path>", "attach this file, end-to-end encrypted; the text, if any, is its caption")
    .option("--reply-to <seq>", "reply to this entry of the conversation (the server sees which)")
    .option(
      "--mention <usernames...>",
      "wake these members even if they muted the conversation (the server sees whom)",
    )
    .action(
      run(io, async (to: string, text: string | undefined, opts: GlobalOptions & SendOptions) => {
        if (opts.file !== undefined) {
          await sendFile(io, opts, to, opts.file, text);
          return;
        }
        if (text === undefined) throw new Error("nothing to send: give a text, --file <path>, or both");
        await withClient(opts, io, "content", async ({ client, encrypted }) => {
          const conversationId = await resolveConversation(client, to);
          const result = await client.sendUnary(conversationId, text, {
            replyTo: replyToOf(opts.replyTo),
            mentions: opts.mention === undefined ? undefined : await userIdsFor(client, opts.mention),
          });
          io.out(`sent #${result.seq} to ${to} (${encrypted ? "end-to-end encrypted" : "not encrypted"})`);
        });
      }),
    );
}

/** The options of `send`. */
interface SendOptions {
  file?: string;
  replyTo?: string;
  mention?: string[];
}

/** A --reply-to value as a seq, or a precise refusal. */
function replyToOf(raw: string | undefined): bigint | undefined {
  if (raw === undefined) return undefined;
  if (!/^[1-9][0-9]{0,18}$/.test(raw)) throw new Error(`--reply-to: a seq (a positive number), got "${raw}"`);
  return BigInt(raw);
}

/** `send --file`: over the stream, showing what others sent meanwhile (it is acknowledged here). */
async function sendFile(
  io: CliIo,
  opts: GlobalOptions,
  to: string,
  path: string,
  caption: string | undefined,
): Promise<void> {
  let size: number;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw new Error(`${path} is not a file`);
    size = info.size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new Error(`no file at ${path}`);
    throw err;
  }
  await withClient(opts, io, "stream", async (session) => {
    const { client } = session;
    if (!session.encrypted) {
      throw new Error(
        "files are sent end-to-end encrypted only, and this profile does not use encryption (--encryption turns it on for good)",
      );
    }
    const conversationId = await resolveConversation(client, to);
    // Attachments go over the stream, which also brings what others sent meanwhile: those
    // entries are acknowledged, so they are shown here rather than lost to the next `listen`.
    const names = new Names(client);
    const labels = new ConversationLabels(client, names);
    client.on("entry", async (e) => {
      if (e.senderUserId === client.userId) return; // this user's own doings
      await labels.load(e.conversationId);
      await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
      const view: EntryView = {
        encrypted: true,
        download: downloadHint(opts, labels.target(e.conversationId)),
      };
      io.out(`(${labels.label(e.conversationId)}) ${formatEntry(e, names, client.userId, view)}`);
    });
    showKeyChanges(client, names, (line) => io.err(line));
    client.on("disconnected", (e) => {
      if (e.retryInMs !== undefined)
        io.err(`-- disconnected (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
    });
    client.on("error", (e) => io.err(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));
    await session.connect();
    const result = await client.sendAttachment(
      conversationId,
      { path, fileName: basename(path) },
      caption === undefined ? {} : { caption },
    );
    io.out(
      `sent #${result.seq} to ${to} (end-to-end encrypted): ${printable(result.attachment.fileName)}, ${formatBytes(size)}`,
    );
  });
}
