import type { Command } from "commander";
import { downloadHint, type EntryView, formatEntry, receiptLine } from "../format.js";
import { openHealth } from "../health.js";
import { type CliIo, describeError, interrupted, run } from "../io.js";
import { ConversationLabels, Names } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { type Session, showKeyChanges, withClient } from "../session.js";

/** `listen`: print what arrives until Ctrl-C. */
export function registerListen(program: Command, io: CliIo): void {
  clientCommand(program, "listen", "print incoming messages and receipts until Ctrl-C").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "stream", (session) => listen(session, opts, io)),
    ),
  );
}

/** Prints entries, receipts and key changes of every conversation until Ctrl-C or a fatal error. */
async function listen(session: Session, opts: GlobalOptions, io: CliIo): Promise<void> {
  const { client, encrypted } = session;
  const names = new Names(client);
  const labels = new ConversationLabels(client, names);
  // Keeps this device's conversation health (needs reply, away summaries) current while listening.
  const health = await openHealth(client, true);
  client.on("entry", async (e) => {
    await labels.load(e.conversationId);
    await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
    const view: EntryView = {
      encrypted,
      download: downloadHint(opts, labels.target(e.conversationId)),
    };
    io.out(`(${labels.label(e.conversationId)}) ${formatEntry(e, names, client.userId, view)}`);
  });
  client.on("receipt", async (r) => {
    await labels.load(r.conversationId);
    await names.load([r.userId]);
    io.out(receiptLine(r, names, ` in ${labels.label(r.conversationId)}`, io.isTTY));
  });
  showKeyChanges(client, names, (line) => io.out(line));
  client.on("caughtUp", (e) =>
    io.err(
      `-- caught up (${e.entries} waiting entries); listening${encrypted ? "" : " (this profile is not end-to-end encrypted)"}, Ctrl-C to stop`,
    ),
  );
  client.on("disconnected", (e) => {
    if (e.retryInMs !== undefined)
      io.err(`-- disconnected (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
  });
  client.on("error", (e) => io.err(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));
  const stop = interrupted(io);
  const fatal = client.waitFor("error", (e) => e.fatal);
  await session.connect();
  const end = await Promise.race([stop.then(() => undefined), fatal]);
  await health.close().catch(() => {});
  if (end !== undefined) throw end.error;
}
