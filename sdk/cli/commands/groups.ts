import type { Command } from "commander";

import { type CliIo, run } from "../io.js";
import { at, userIdsFor } from "../names.js";
import { clientCommand, type GlobalOptions, requireGroupId } from "../options.js";
import { withClient } from "../session.js";

/** `group create`, `group add` and `group remove`. */
export function registerGroupCommands(program: Command, io: CliIo): void {
  const group = program.command("group").description("manage groups");
  clientCommand(
    group,
    "create <title> [members...]",
    "create a group with you as admin and the given usernames",
  ).action(
    run(io, async (title: string, members: string[], opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const ids = await userIdsFor(client, members);
        const conversation = await client.createGroup(title, ids);
        io.out(conversation.conversationId);
        io.err(
          `created group "${title}" with ${members.length === 0 ? "just you" : members.map(at).join(", ")}`,
        );
      }),
    ),
  );
  clientCommand(group, "add <groupId> <usernames...>", "add users to a group (admins only)").action(
    run(io, async (groupId: string, usernames: string[], opts: GlobalOptions) =>
      withClient(opts, io, "content", async ({ client, encrypted }) => {
        const entry = await client.addMembers(requireGroupId(groupId), await userIdsFor(client, usernames));
        // The entry rotates this device's sender key at once (new members must not read what
        // came before), rather than whenever this device next reads the log.
        if (entry !== undefined && encrypted) await client.toIncoming(entry);
        io.out(
          entry === undefined
            ? "nobody added (already members)"
            : `added ${usernames.map(at).join(", ")} (#${entry.seq})`,
        );
      }),
    ),
  );
  clientCommand(group, "remove <groupId> <usernames...>", "remove users from a group (admins only)").action(
    run(io, async (groupId: string, usernames: string[], opts: GlobalOptions) =>
      withClient(opts, io, "content", async ({ client, encrypted }) => {
        const entry = await client.removeMembers(
          requireGroupId(groupId),
          await userIdsFor(client, usernames),
        );
        // As for add: removed members must not hold the key of what this device sends next.
        if (entry !== undefined && encrypted) await client.toIncoming(entry);
        io.out(
          entry === undefined
            ? "nobody removed (not members)"
            : `removed ${usernames.map(at).join(", ")} (#${entry.seq})`,
        );
      }),
    ),
  );
}
