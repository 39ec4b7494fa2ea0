import type { Command } from "commander";

import { type CliIo, run } from "../io.js";
import { at, Names, resolveConversation, userIdsFor } from "../names.js";
import { clientCommand, type GlobalOptions, nonNegative, positiveSeq } from "../options.js";
import { withClient } from "../session.js";

/** A username (with or without @) or a user id to the user id. */
async function userIdOf(client: Parameters<typeof userIdsFor>[0], who: string): Promise<string> {
  if (/^u_[0-9a-z]{26}$/.test(who)) return who;
  const [id] = await userIdsFor(client, [who]);
  return id!;
}

/** `block`, `unblock`, `blocked` and `report`. */
export function registerSafety(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "block <user>",
    "block a user (username or id): they can no longer message you directly, see your presence or typing, or add you to groups",
  ).action(
    run(io, async (who: string, opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const newly = await client.safety.block(await userIdOf(client, who));
        io.out(newly ? `blocked ${at(who)}` : `${at(who)} was blocked already`);
      }),
    ),
  );
  clientCommand(program, "unblock <user>", "lift a block (username or id)").action(
    run(io, async (who: string, opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const was = await client.safety.unblock(await userIdOf(client, who));
        io.out(was ? `unblocked ${at(who)}` : `${at(who)} was not blocked`);
      }),
    ),
  );
  clientCommand(program, "blocked", "list the users you blocked (on any of your devices)").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const blocked = await client.safety.blocked();
        const names = new Names(client);
        await names.load(blocked.map((b) => b.userId));
        for (const b of blocked) {
          io.out(
            `${names.label(b.userId)}  ${b.userId}  since ${new Date(Number(b.blockedAtMs)).toISOString()}`,
          );
        }
        if (blocked.length === 0) io.err("you have blocked nobody");
      }),
    ),
  );
  clientCommand(
    program,
    "report <user>",
    "report a user (username or id) to the operators; --disclose sends them the last messages as this device decrypted them",
  )
    .option("--reason <text>", "why, in your words (at most 500 characters)", "")
    .option(
      "--in <conversation>",
      "the conversation to disclose from (username or id; default: yours with the user)",
    )
    .option("--message <seq>", "the reported message's seq in that conversation", positiveSeq)
    .option(
      "--disclose <n>",
      "disclose the messages among the conversation's last n entries (at most 50)",
      nonNegative,
      0,
    )
    .action(
      run(
        io,
        async (
          who: string,
          opts: GlobalOptions & { reason: string; in?: string; message?: bigint; disclose: number },
        ) =>
          withClient(opts, io, opts.disclose > 0 ? "content" : "none", async ({ client }) => {
            const userId = await userIdOf(client, who);
            const wantsConversation =
              opts.disclose > 0 || opts.message !== undefined || opts.in !== undefined;
            const conversationId = wantsConversation
              ? await resolveConversation(client, opts.in ?? who)
              : undefined;
            const reportId = await client.safety.report(userId, {
              reason: opts.reason,
              ...(conversationId !== undefined && { conversationId }),
              ...(opts.message !== undefined && { targetSeq: opts.message }),
              disclose: opts.disclose,
            });
            io.out(`reported ${at(who)}: ${reportId}`);
            if (opts.disclose > 0) io.err("the disclosed messages were sent to the operators as plaintext");
          }),
      ),
    );
}
