import { toJson } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import {
  type AdminService,
  CreateInviteResponseSchema,
  DrainGatewayResponseSchema,
  GetStatsResponseSchema,
  ListInvitesResponseSchema,
  type LookupUserResponse,
  LookupUserResponseSchema,
  RevokeDeviceResponseSchema,
  RevokeInviteResponseSchema,
} from "../../gen/switchboard/internal/v1/admin_pb.js";
import type { DeviceRoute } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { Device } from "../../gen/switchboard/v1/accounts_pb.js";
// Not the config barrel: it loads every settings schema (zod), which `switchboard --help` need not.
import { environment } from "../common/config/environment.js";
import { AdminError, adminCredential, connect, describeAdminError } from "./admin/connection.js";
import { bytes, collect, duration, inviteState, parseTtl, ranges, table, time } from "./admin/format.js";
import type { AdminIo, AdminOptions } from "./admin/kit.js";
import { registerReportCommands } from "./admin/reports.js";
import { registerUserCommands } from "./admin/users.js";

export { adminCredential, describeAdminError } from "./admin/connection.js";
export { parseTtl } from "./admin/format.js";

export type { AdminIo } from "./admin/kit.js";

const processIo: AdminIo = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  env: environment(),
};

/** Zeros and empty lists are printed too, so scripts find every field. */
const JSON_OPTIONS = { alwaysEmitImplicit: true } as const;

/**
 * Adds `switchboard admin` (stats, user, revoke, drain, invite create|list|revoke): operator commands against the
 * AdminService of running processes, authenticated with the deployment's internal credential.
 */
export function registerAdminCommands(program: Command, io: AdminIo = processIo): void {
  const admin = program
    .command("admin")
    .description(
      "operate a running deployment: stats, look up a user, revoke a device, drain a gateway, registration invites " +
        "(authenticated with SWITCHBOARD_TOKEN_KEY, or --data-dir of a one-process server)",
    );
  const cmd = (spec: string, description: string, urlHelp: string, parent: Command = admin): Command =>
    parent
      .command(spec)
      .description(description)
      .requiredOption("--url <url>", urlHelp, collect, [])
      .option(
        "--data-dir <dir>",
        "read the token key from <dir>/token.key (a one-process server's data directory)",
      )
      .option("--json", "print the answer as JSON (one object per line)")
      .option("--operator <name>", "who is acting, for the servers' audit log (default: your login name)");

  /**
   * Runs an action against each URL in turn with one credential; failures are printed per URL
   * and make the command exit 1 after the others were tried.
   */
  const run =
    <A extends unknown[]>(
      action: (
        client: Client<typeof AdminService>,
        url: string,
        opts: AdminOptions,
        ...args: A
      ) => Promise<void>,
      single: boolean,
    ) =>
    async (...args: [...A, AdminOptions, Command]): Promise<void> => {
      const opts = args[args.length - 2] as AdminOptions;
      const positional = args.slice(0, args.length - 2) as unknown as A;
      if (single && opts.url.length > 1) throw new AdminError("give exactly one --url for this command");
      const credential = await adminCredential(opts.dataDir, io.env);
      let failed = 0;
      for (const url of opts.url) {
        let connection: ReturnType<typeof connect> | undefined;
        try {
          connection = connect(url, credential, opts.operator);
          await action(connection.client, url, opts, ...positional);
        } catch (err) {
          failed++;
          if (single) throw new AdminError(describeAdminError(url, err));
          io.err(`switchboard: ${describeAdminError(url, err)}`);
        } finally {
          connection?.close();
        }
      }
      if (failed > 0) process.exitCode = 1;
    };

  cmd(
    "stats",
    "what each process is doing: instance, roles, uptime, streams, shards, outbox, pushes, counters",
    "a process's h2c URL (repeat for several processes)",
  ).action(
    run(async (client, url, opts) => {
      const s = await client.getStats({});
      if (opts.json) {
        io.out(JSON.stringify({ url, ...(toJson(GetStatsResponseSchema, s, JSON_OPTIONS) as object) }));
        return;
      }
      io.out(
        `${url}  instance ${s.instanceId}  roles ${s.roles.join(",")}  up ${duration(Number(s.uptimeMs))}`,
      );
      const rows: string[][] = [];
      if (s.process) {
        rows.push(["process", "rss", bytes(s.process.rssBytes)]);
        rows.push(["", "heap used", bytes(s.process.heapUsedBytes)]);
        rows.push(["", "event loop busy", `${(s.process.eventLoopUtilization * 100).toFixed(1)}%`]);
        rows.push(["", "node", s.process.nodeVersion]);
      }
      const counters = (role: string, map: Record<string, bigint>) => {
        for (const [name, value] of Object.entries(map).sort(([a], [b]) => a.localeCompare(b)))
          rows.push([role, name, String(value)]);
      };
      if (s.gateway) {
        rows.push(["gateway", "streams", String(s.gateway.streams)]);
        rows.push(["gateway", "devices", String(s.gateway.devices)]);
        rows.push(["gateway", "draining", s.gateway.draining ? "yes" : "no"]);
        counters("gateway", s.gateway.counters);
      }
      if (s.sequencer) {
        rows.push(["sequencer", "owned shards", ranges(s.sequencer.ownedShards)]);
        rows.push(["sequencer", "outbox size", String(s.sequencer.outboxSize)]);
        counters(
          "sequencer",
          Object.fromEntries(Object.entries(s.sequencer.outboxCounters).map(([k, v]) => [`outbox ${k}`, v])),
        );
      }
      if (s.notifier) {
        rows.push(["notifier", "pending", String(s.notifier.pending)]);
        counters("notifier", s.notifier.counters);
      }
      // The role is named on the first row of its group only.
      let group = "";
      for (const row of rows) {
        if (row[0] === group) row[0] = "";
        else group = row[0] ?? "";
      }
      for (const line of table(rows)) io.out(line);
    }, false),
  );

  cmd(
    "user <username-or-id>",
    "a user's devices (from an accounts process) and live routes (from a presence process)",
    "an accounts or presence process's URL; in a split deployment give one of each",
  ).action(async (query: string, opts: AdminOptions) => {
    // Unlike the others, `user` merges the answers of several processes (accounts and presence
    // run in different processes in a split deployment).
    const credential = await adminCredential(opts.dataDir, io.env);
    const answers: Array<{ url: string; answer: LookupUserResponse }> = [];
    const errors: string[] = [];
    // Accounts answers by username or id; a presence-only process knows ids only, so a username
    // is resolved first and the others are asked by id.
    let asked = query;
    const ask = async (url: string, user: string) => {
      const connection = connect(url, credential, opts.operator);
      try {
        return await connection.client.lookupUser({ user });
      } finally {
        connection.close();
      }
    };
    const later: string[] = [];
    for (const url of opts.url) {
      try {
        const answer = await ask(url, asked);
        answers.push({ url, answer });
        if (answer.user) asked = answer.user.userId;
      } catch (err) {
        // A presence-only process asked by username: retry it once the id is known.
        if (
          err instanceof ConnectError &&
          err.code === Code.FailedPrecondition &&
          /by id only/.test(err.rawMessage)
        )
          later.push(url);
        else errors.push(describeAdminError(url, err));
      }
    }
    for (const url of later) {
      try {
        if (asked === query)
          throw new AdminError(
            `${url} knows users by id only; add the URL of an accounts process, or pass the user id`,
          );
        answers.push({ url, answer: await ask(url, asked) });
      } catch (err) {
        errors.push(describeAdminError(url, err));
      }
    }
    for (const e of errors) io.err(`switchboard: ${e}`);
    if (answers.length === 0) {
      process.exitCode = 1;
      return;
    }
    if (opts.json) {
      for (const { url, answer } of answers)
        io.out(
          JSON.stringify({ url, ...(toJson(LookupUserResponseSchema, answer, JSON_OPTIONS) as object) }),
        );
      if (errors.length > 0) process.exitCode = 1;
      return;
    }
    const user = answers.find((a) => a.answer.user)?.answer.user;
    const devices: Device[] = answers.find((a) => a.answer.user)?.answer.devices ?? [];
    const withPresence = answers.find((a) => a.answer.presenceKnown)?.answer;
    const routes: DeviceRoute[] = withPresence?.routes ?? [];
    if (user) {
      io.out(
        `user @${user.username} (${user.userId}) "${user.displayName}", created ${time(user.createdAtMs)}`,
      );
    } else {
      io.out(`user ${asked}`);
    }
    if (withPresence) {
      io.out(
        withPresence.online
          ? `online (${routes.length} live route${routes.length === 1 ? "" : "s"})`
          : `offline, last seen ${time(withPresence.lastSeenMs)}`,
      );
    }
    const routeText = (deviceId: string) =>
      routes
        .filter((r) => r.deviceId === deviceId)
        .map((r) => `${r.gatewayId} (session ${r.sessionId})`)
        .join(", ") || (withPresence ? "offline" : "?");
    if (user) {
      const rows = [["DEVICE", "NAME", "CREATED", "REVOKED", "PUSH", "ROUTE"]];
      for (const d of devices) {
        rows.push([
          d.deviceId,
          d.name,
          time(d.createdAtMs),
          time(d.revokedAtMs),
          d.pushKind || "-",
          routeText(d.deviceId),
        ]);
      }
      io.out(`devices (${devices.length}):`);
      for (const line of table(rows)) io.out(line);
    }
    const known = new Set(devices.map((d) => d.deviceId));
    const other = user ? routes.filter((r) => !known.has(r.deviceId)) : routes;
    if (other.length > 0) {
      io.out(user ? "routes of unlisted devices:" : "routes:");
      for (const line of table([
        ["DEVICE", "GATEWAY", "SESSION"],
        ...other.map((r) => [r.deviceId, r.gatewayId, r.sessionId]),
      ]))
        io.out(line);
    }
    const missing = new Set(answers.flatMap((a) => a.answer.missingRoles));
    if (user) missing.delete("accounts");
    if (withPresence) missing.delete("presence");
    for (const role of missing) {
      io.out(
        role === "presence"
          ? "routes: unknown (this process does not run presence; add --url of a presence process)"
          : "devices: unknown (this process does not run accounts; add --url of an accounts process)",
      );
    }
    if (errors.length > 0) process.exitCode = 1;
  });

  cmd(
    "revoke <device-id>",
    "revoke a device: its token and credential stop working and every gateway closes its streams",
    "an accounts process's URL",
  ).action(
    run(async (client, _url, opts, deviceId: string) => {
      const r = await client.revokeDevice({ deviceId });
      if (opts.json) {
        io.out(JSON.stringify(toJson(RevokeDeviceResponseSchema, r, JSON_OPTIONS)));
        return;
      }
      const d = r.device;
      io.out(
        r.alreadyRevoked
          ? `device ${deviceId} was already revoked at ${time(d?.revokedAtMs ?? 0n)}; its streams were told to close again`
          : `revoked device ${deviceId} ("${d?.name ?? ""}", user ${d?.userId ?? "?"}) at ${time(d?.revokedAtMs ?? 0n)}; gateways close its streams`,
      );
    }, true),
  );

  cmd(
    "drain",
    "turn a gateway away from devices: it reports not ready and closes every stream with UNAVAILABLE " +
      "so devices reconnect elsewhere; the process keeps running until it is stopped",
    "the gateway process's URL",
  ).action(
    run(async (client, url, opts) => {
      const r = await client.drainGateway({});
      if (opts.json) {
        io.out(JSON.stringify({ url, ...(toJson(DrainGatewayResponseSchema, r, JSON_OPTIONS) as object) }));
        return;
      }
      io.out(
        `drained gateway ${r.instanceId} (${url}): closed ${r.closedStreams} stream${r.closedStreams === 1 ? "" : "s"}` +
          `${r.alreadyDraining ? " (it was already draining)" : ""}; it refuses new streams and reports not ready ` +
          "until it is restarted",
      );
    }, true),
  );

  const invite = admin
    .command("invite")
    .description(
      "registration invites (for SWITCHBOARD_REGISTRATION=invite): create, list, revoke; ask an accounts process",
    );
  const modeWarning = (mode: string) => {
    if (mode !== "invite")
      io.err(
        `note: this server's registration is ${mode || "open"}; invites are checked only with SWITCHBOARD_REGISTRATION=invite`,
      );
  };

  cmd(
    "create",
    "make an invite and print its token (shown once; the server keeps only its hash)",
    "an accounts process's URL",
    invite,
  )
    .option("--uses <n>", "registrations it allows (1 to 10000)", "1")
    .option("--ttl <duration>", "how long it works: 90s, 30m, 12h, 7d (at most 365d)", "7d")
    .option("--note <text>", "who it is for, at most 200 characters", "")
    .action(
      run(async (client, _url, opts) => {
        const o = opts as AdminOptions & { uses: string; ttl: string; note: string };
        // 0 would mean "the default" on the wire, so it is refused here.
        if (!/^\d+$/.test(o.uses) || Number(o.uses) < 1)
          throw new AdminError(`--uses ${o.uses}: expected a whole number, at least 1`);
        const r = await client.createInvite({
          uses: Number(o.uses),
          ttlMs: BigInt(parseTtl(o.ttl)),
          note: o.note,
        });
        if (opts.json) {
          io.out(JSON.stringify(toJson(CreateInviteResponseSchema, r, JSON_OPTIONS)));
          return;
        }
        const i = r.invite;
        io.out(r.token);
        io.err(
          `invite ${i?.inviteId ?? "?"}: ${i?.maxUses ?? 0} use${i?.maxUses === 1 ? "" : "s"}, valid until ${time(i?.expiresAtMs ?? 0n)}; ` +
            "hand the token to the person invited (switchboard register <username> --invite <token>); it is not shown again",
        );
        modeWarning(r.registrationMode);
      }, true),
    );

  cmd(
    "list",
    "list invites, newest first: uses left, expiry, state, note",
    "an accounts process's URL",
    invite,
  ).action(
    run(async (client, _url, opts) => {
      const r = await client.listInvites({});
      if (opts.json) {
        io.out(JSON.stringify(toJson(ListInvitesResponseSchema, r, JSON_OPTIONS)));
        return;
      }
      const now = Date.now();
      const rows = [["INVITE", "STATE", "USES LEFT", "CREATED", "EXPIRES", "NOTE"]];
      for (const i of r.invites) {
        rows.push([
          i.inviteId,
          inviteState(i, now),
          `${i.usesLeft}/${i.maxUses}`,
          time(i.createdAtMs),
          time(i.expiresAtMs),
          i.note,
        ]);
      }
      io.out(`invites (${r.invites.length}${r.truncated ? ", more not listed" : ""}):`);
      for (const line of table(rows)) io.out(line);
      modeWarning(r.registrationMode);
    }, true),
  );

  cmd(
    "revoke <invite-id>",
    "revoke an invite: its token stops working at once",
    "an accounts process's URL",
    invite,
  ).action(
    run(async (client, _url, opts, inviteId: string) => {
      const r = await client.revokeInvite({ inviteId });
      if (opts.json) {
        io.out(JSON.stringify(toJson(RevokeInviteResponseSchema, r, JSON_OPTIONS)));
        return;
      }
      io.out(
        r.alreadyRevoked
          ? `invite ${inviteId} was already revoked at ${time(r.invite?.revokedAtMs ?? 0n)}`
          : `revoked invite ${inviteId} at ${time(r.invite?.revokedAtMs ?? 0n)} (${r.invite?.usesLeft ?? 0} unused use${r.invite?.usesLeft === 1 ? "" : "s"})`,
      );
    }, true),
  );

  registerUserCommands(admin, { io, cmd, run });
  registerReportCommands({ io, cmd, run });
}
