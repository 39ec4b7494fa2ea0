import type { Command } from "commander";

import type { Audience } from "../../privacy.js";
import { type CliIo, run } from "../io.js";
import { audience, clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

/** `privacy`: who may add you to groups and start direct conversations with you. */
export function registerPrivacy(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "privacy",
    "show your privacy settings, or change who may add you to groups (--groups) and who may start a direct conversation with you (--direct)",
  )
    .option("--groups <audience>", "who may add you to groups: everyone, contacts or nobody", audience)
    .option(
      "--direct <audience>",
      "who may start a new direct conversation with you: everyone, contacts or nobody",
      audience,
    )
    .action(
      run(io, async (opts: GlobalOptions & { groups?: Audience; direct?: Audience }) =>
        withClient(opts, io, "none", async ({ client }) => {
          const changes = {
            ...(opts.groups !== undefined && { groupAdd: opts.groups }),
            ...(opts.direct !== undefined && { directOpen: opts.direct }),
          };
          const settings =
            Object.keys(changes).length === 0 ? await client.getPrivacy() : await client.setPrivacy(changes);
          io.out(`groups: ${settings.groupAdd}`);
          io.out(`direct: ${settings.directOpen}`);
          io.err('"contacts" are the users who share a conversation with you (direct or group)');
        }),
      ),
    );
}
