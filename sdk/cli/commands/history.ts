import type { Command } from "commander";
import type { SwitchboardClient } from "../../client.js";
import type { IncomingEntry } from "../../types.js";

import { downloadHint, type EntryView, formatEntry, hintTarget } from "../format.js";
import { type CliIo, run } from "../io.js";
import { Names, resolveConversation } from "../names.js";
import { clientCommand, type GlobalOptions, nonNegative } from "../options.js";
import { withClient } from "../session.js";

/** `history`: print a page of a conversation's log. */
export function registerHistory(program: Command, io: CliIo): void {
  clientCommand(program, "history <with>", "print a conversation's log (username or conversation id)")
    .option("--after <seq>", "entries after this seq", nonNegative, 0)
    .option("--limit <n>", "at most this many entries (max 1000)", nonNegative, 50)
    .action(
      run(io, async (target: string, opts: GlobalOptions & { after: number; limit: number }) =>
        withClient(opts, io, "content", async ({ client, encrypted }) => {
          const conversationId = await resolveConversation(client, target);
          const page = await client.getHistory(conversationId, { afterSeq: opts.after, limit: opts.limit });
          if (encrypted) {
            // A history another device sent this one and no stream picked up yet comes in first.
            await client.history.receivePending();
            page.entries = await withImported(client, conversationId, page, opts.after);
          }
          const names = new Names(client);
          await names.load(
            page.entries.flatMap((e) => [e.senderUserId, ...(e.membership?.userIds ?? []), ...e.mentions]),
          );
          const view: EntryView = {
            encrypted,
            download: downloadHint(opts, hintTarget(target, conversationId)),
          };
          for (const e of page.entries) {
            if (!e.keysOnly) io.out(formatEntry(e, names, client.userId, view));
          }
          if (page.entries.length === 0) io.err(`no entries after #${opts.after} (last is #${page.lastSeq})`);
          const last = page.entries.at(-1);
          if (page.hasMore && last !== undefined) io.err(`more: --after ${last.seq}`);
        }),
      ),
    );
}

/**
 * The page with the entries another device sent this one (link-approve --history) merged in by
 * seq: those the server does not show this device (from before it linked), and those it shows
 * but this device cannot read (encrypted for the devices of the time only).
 */
async function withImported(
  client: SwitchboardClient,
  conversationId: string,
  page: { entries: IncomingEntry[]; hasMore: boolean },
  after: number,
): Promise<IncomingEntry[]> {
  const imported = await client.history.entries(conversationId);
  if (imported.length === 0) return page.entries;
  const last = page.entries.at(-1)?.seq;
  const bySeq = new Map(page.entries.map((e) => [e.seq, e] as const));
  for (const e of imported) {
    if (e.seq <= BigInt(after) || (page.hasMore && last !== undefined && e.seq > last)) continue;
    const shown = bySeq.get(e.seq);
    if (shown === undefined || shown.decodeError !== undefined) bySeq.set(e.seq, e);
  }
  return [...bySeq.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
}
