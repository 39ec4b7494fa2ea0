import type { Command } from "commander";
import { downloadHint, type EntryView, formatEntry, hintTarget } from "../format.js";
import { type CliIo, run } from "../io.js";
import { Names, resolveConversation } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

/** A message's seq as typed: a positive integer. */
function parseSeq(value: string): bigint {
  if (!/^[1-9][0-9]{0,15}$/.test(value)) throw new Error(`not a message number: "${value}"`);
  return BigInt(value);
}

/** `pin`, `unpin` and `pins`: a conversation's pinned messages. */
export function registerPins(program: Command, io: CliIo): void {
  for (const unpin of [false, true]) {
    const name = unpin ? "unpin" : "pin";
    clientCommand(
      program,
      `${name} <conversation> <seq>`,
      unpin
        ? "unpin a message (#seq, as history shows it) of a conversation (username, group id or conversation id)"
        : "pin a message (#seq, as history shows it) to the top of a conversation (groups: admins only; at most 3)",
    ).action(
      run(io, async (target: string, seqText: string, opts: GlobalOptions) => {
        const seq = parseSeq(seqText);
        await withClient(opts, io, "none", async ({ client }) => {
          const conversationId = await resolveConversation(client, target);
          const sent = await (unpin
            ? client.pins.unpin(conversationId, seq, { unary: true })
            : client.pins.pin(conversationId, seq, { unary: true }));
          io.out(`${unpin ? "unpinned" : "pinned"} #${seq} (#${sent.seq})`);
        });
      }),
    );
  }
  clientCommand(
    program,
    "pins <conversation>",
    "list a conversation's pinned messages, oldest pin first, each with the message as history shows it",
  ).action(
    run(io, async (target: string, opts: GlobalOptions) => {
      // "content": the messages are decrypted (or read from what this device kept of them).
      await withClient(opts, io, "content", async ({ client, encrypted }) => {
        const conversationId = await resolveConversation(client, target);
        const pins = await client.pins.list(conversationId);
        if (pins.length === 0) {
          io.out("no pinned messages");
          return;
        }
        const messages = await Promise.all(
          pins.map(async (p) => {
            const page = await client.getHistory(conversationId, { afterSeq: p.seq - 1n, limit: 1 });
            return page.entries.find((e) => e.seq === p.seq);
          }),
        );
        const names = new Names(client);
        await names.load([
          ...pins.map((p) => p.pinnedBy),
          ...messages.flatMap((m) => (m ? [m.senderUserId] : [])),
        ]);
        const view: EntryView = {
          encrypted,
          download: downloadHint(opts, hintTarget(target, conversationId)),
        };
        for (const [i, p] of pins.entries()) {
          const when = new Date(Number(p.pinnedAtMs)).toISOString();
          io.out(`#${p.seq} pinned by ${names.label(p.pinnedBy)} at ${when}`);
          const message = messages[i];
          if (message !== undefined) io.out(`  ${formatEntry(message, names, client.userId, view)}`);
        }
      });
    }),
  );
}
