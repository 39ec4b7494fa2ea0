import type { Command } from "commander";

import type { Audience } from "../../privacy.js";
import { type CliIo, run } from "../io.js";
import { audience, clientCommand, type GlobalOptions, onOff } from "../options.js";
import { withClient } from "../session.js";

interface PrivacyOptions extends GlobalOptions {
  groups?: Audience;
  direct?: Audience;
  lastSeen?: Audience;
  readReceipts?: boolean;
}

/**
 * `privacy`: who may add you to groups and start direct conversations with you, who sees your
 * last seen, and whether your read receipts are on.
 */
export function registerPrivacy(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "privacy",
    "show your privacy settings, or change who may add you to groups (--groups), who may start a direct conversation with you (--direct), who sees your online state and last seen (--last-seen) and whether you send read receipts (--read-receipts)",
  )
    .option("--groups <audience>", "who may add you to groups: everyone, contacts or nobody", audience)
    .option(
      "--direct <audience>",
      "who may start a new direct conversation with you: everyone, contacts or nobody",
      audience,
    )
    .option(
      "--last-seen <audience>",
      "who sees when you are online and when you were last seen: everyone, contacts (users you have a direct conversation with) or nobody; you then see theirs only when yours admits them",
      audience,
    )
    .option(
      "--read-receipts <on|off>",
      "whether others see when you read their messages; off, you see no one's (delivered ticks stay)",
      onOff,
    )
    .action(
      run(io, async (opts: PrivacyOptions) =>
        withClient(opts, io, "none", async ({ client }) => {
          const changes = {
            ...(opts.groups !== undefined && { groupAdd: opts.groups }),
            ...(opts.direct !== undefined && { directOpen: opts.direct }),
            ...(opts.lastSeen !== undefined && { lastSeen: opts.lastSeen }),
            ...(opts.readReceipts !== undefined && { readReceipts: opts.readReceipts }),
          };
          const settings =
            Object.keys(changes).length === 0 ? await client.getPrivacy() : await client.setPrivacy(changes);
          io.out(`groups: ${settings.groupAdd}`);
          io.out(`direct: ${settings.directOpen}`);
          io.out(`last seen: ${settings.lastSeen}`);
          io.out(`read receipts: ${settings.readReceipts ? "on" : "off"}`);
          io.err(
            '"contacts" are the users who share a conversation with you (direct or group); for last seen, those with a direct conversation',
          );
        }),
      ),
    );
}
