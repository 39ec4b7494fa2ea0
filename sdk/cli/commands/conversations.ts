import type { Command } from "commander";

import { ConversationKind } from "../../../gen/switchboard/v1/conversations_pb.js";
import { printable } from "../files.js";
import { needsReplyNote, openHealth } from "../health.js";
import { type CliIo, run } from "../io.js";
import { Names } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

/** `conversations` and `groups`: list them, with unread counts and "needs reply" (sdk/health/). */
export function registerConversationLists(program: Command, io: CliIo): void {
  for (const [name, groupsOnly] of [
    ["conversations", false],
    ["groups", true],
  ] as const) {
    clientCommand(program, name, groupsOnly ? "list your groups" : "list your conversations").action(
      run(io, async (opts: GlobalOptions) =>
        withClient(opts, io, "none", async ({ client }) => {
          const names = new Names(client);
          let conversations = await client.listConversations();
          if (groupsOnly) conversations = conversations.filter((c) => c.kind === ConversationKind.GROUP);
          // "Needs reply" from this device's health state, caught up with what it has not streamed.
          const health = await openHealth(client, false);
          await health.catchUpAll({ conversations, limit: 20 });
          const waiting = conversations.map((c) => health.needsReply(c.conversationId));
          await names.load([
            ...conversations.map((c) => c.peerUserId).filter((id) => id !== ""),
            ...waiting.flatMap((n) => (n.fromUserId === undefined ? [] : [n.fromUserId])),
          ]);
          const now = Date.now();
          if (conversations.length === 0) io.err(groupsOnly ? "no groups" : "no conversations");
          for (const [i, c] of conversations.entries()) {
            const unread = c.lastSeq > c.readUpTo ? c.lastSeq - c.readUpTo : 0n;
            const what =
              c.kind === ConversationKind.GROUP
                ? `${printable(c.title)} (${c.memberCount} members)`
                : names.label(c.peerUserId);
            const group = c.kind === ConversationKind.GROUP;
            const note = waiting[i] === undefined ? "" : needsReplyNote(waiting[i], names, group, now);
            io.out(
              `${c.conversationId}  ${what}  last #${c.lastSeq}${unread > 0n ? `  unread ${unread}` : ""}${note}`,
            );
          }
        }),
      ),
    );
  }
}
