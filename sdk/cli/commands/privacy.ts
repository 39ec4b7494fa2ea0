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
  nameVisibleTo?: Audience;
  displayName?: string;
}

/**
 * `privacy`: who may add you to groups and start direct conversations with you, who sees your
 * last seen and your display name, whether your read receipts are on; and the display name.
 */
export function registerPrivacy(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "privacy",
    "show your privacy settings, or change who may add you to groups (--groups), who may start a direct conversation with you (--direct), who sees your online state and last seen (--last-seen) and whether you send read receipts (--read-receipts), who sees your display name (--name-visible-to), and your display name (--display-name)",
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
    .option(
      // Not --profile: that global option names the profile directory.
      "--name-visible-to <audience>",
      "who sees your display name: everyone, contacts (users you have a direct conversation with) or nobody; others see your username",
      audience,
    )
    .option("--display-name <name>", "change your display name (1 to 64 characters)")
    .action(
      run(io, async (opts: PrivacyOptions) =>
        withClient(opts, io, "none", async ({ client }) => {
          const changes = {
            ...(opts.groups !== undefined && { groupAdd: opts.groups }),
            ...(opts.direct !== undefined && { directOpen: opts.direct }),
            ...(opts.lastSeen !== undefined && { lastSeen: opts.lastSeen }),
            ...(opts.readReceipts !== undefined && { readReceipts: opts.readReceipts }),
            ...(opts.nameVisibleTo !== undefined && { profile: opts.nameVisibleTo }),
          };
          if (opts.displayName !== undefined) {
            const user = await client.setDisplayName(opts.displayName);
            io.out(`display name: ${user.displayName}`);
          }
          const settings =
            Object.keys(changes).length === 0 ? await client.getPrivacy() : await client.setPrivacy(changes);
          io.out(`groups: ${settings.groupAdd}`);
          io.out(`direct: ${settings.directOpen}`);
          io.out(`last seen: ${settings.lastSeen}`);
          io.out(`read receipts: ${settings.readReceipts ? "on" : "off"}`);
          io.out(`name visible to: ${settings.profile}`);
          io.err(
            '"contacts" are the users who share a conversation with you (direct or group); for last seen and your name, those with a direct conversation',
          );
        }),
      ),
    );
}
