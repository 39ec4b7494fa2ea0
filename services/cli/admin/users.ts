import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import {
  DeleteUserResponseSchema,
  ExportUserResponseSchema,
  SuspendUserResponseSchema,
  UnsuspendUserResponseSchema,
} from "../../../gen/switchboard/internal/v1/admin_pb.js";
import { AdminError } from "./connection.js";
import { time } from "./format.js";
import type { AdminKit, AdminOptions } from "./kit.js";

/** Zeros and empty lists are printed too, so scripts find every field. */
const JSON_OPTIONS = { alwaysEmitImplicit: true } as const;

/** `switchboard admin suspend | unsuspend | delete | export`: a user's account and data. */
export function registerUserCommands(admin: Command, { io, cmd, run }: AdminKit): void {
  cmd(
    "suspend <username-or-id>",
    "suspend a user: no token or stream for any of their devices, open streams close; nothing is deleted",
    "an accounts process's URL",
    admin,
  )
    .option("--reason <text>", "why, for the audit log (at most 200 characters)", "")
    .action(
      run(async (client, _url, opts, user: string) => {
        const { reason } = opts as AdminOptions & { reason: string };
        const r = await client.suspendUser({ user, reason });
        if (opts.json) {
          io.out(JSON.stringify(toJson(SuspendUserResponseSchema, r, JSON_OPTIONS)));
          return;
        }
        const who = `@${r.user?.username ?? "?"} (${r.user?.userId ?? "?"})`;
        io.out(
          r.alreadySuspended
            ? `${who} was already suspended at ${time(r.suspendedAtMs)}; the streams of ${r.devicesClosed} device(s) were told to close again`
            : `suspended ${who} at ${time(r.suspendedAtMs)}; gateways close the streams of ${r.devicesClosed} device(s); switchboard admin unsuspend lifts it`,
        );
      }, true),
    );

  cmd("unsuspend <username-or-id>", "lift a user's suspension", "an accounts process's URL", admin).action(
    run(async (client, _url, opts, user: string) => {
      const r = await client.unsuspendUser({ user });
      if (opts.json) {
        io.out(JSON.stringify(toJson(UnsuspendUserResponseSchema, r, JSON_OPTIONS)));
        return;
      }
      const who = `@${r.user?.username ?? "?"} (${r.user?.userId ?? "?"})`;
      io.out(
        r.wasSuspended
          ? `lifted the suspension of ${who}: their active devices can get tokens and streams again`
          : `${who} was not suspended`,
      );
    }, true),
  );

  cmd(
    "delete <user-id>",
    "delete a user for good: revoke every device, delete their keys, leave their groups, remove the account (frees the username)",
    "an accounts process's URL",
    admin,
  )
    .option("--reason <text>", "why, for the audit log (at most 200 characters)", "")
    .option("--yes", "confirm: deletion cannot be undone")
    .action(
      run(async (client, _url, opts, userId: string) => {
        const o = opts as AdminOptions & { reason: string; yes?: boolean };
        if (!o.yes) {
          throw new AdminError(
            `deleting ${userId} cannot be undone; run \`switchboard admin export ${userId}\` first if the data is wanted, then add --yes`,
          );
        }
        const r = await client.deleteUser({ userId, reason: o.reason });
        if (opts.json) {
          io.out(JSON.stringify(toJson(DeleteUserResponseSchema, r, JSON_OPTIONS)));
          return;
        }
        io.out(
          `deleted @${r.username} (${r.userId}): ${r.devices} device(s) revoked and removed, keys of ` +
            `${r.deviceKeysDeleted} deleted, left ${r.groupsLeft} group(s); ${r.directConversations} direct ` +
            "conversation(s) stay with the other person; the username is free again",
        );
      }, true),
    );

  cmd(
    "export <username-or-id>",
    "what the server holds about a user as JSON: account, devices, key counts, settings, conversations with sizes (no message content)",
    "an accounts process's URL",
    admin,
  ).action(
    run(async (client, _url, opts, user: string) => {
      const r = await client.exportUser({ user });
      const json = toJson(ExportUserResponseSchema, r, JSON_OPTIONS);
      // The export is JSON either way: indented for people, one line with --json.
      io.out(opts.json ? JSON.stringify(json) : JSON.stringify(json, null, 2));
    }, true),
  );
}
