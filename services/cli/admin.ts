import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { toJson } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Command } from "commander";
import {
  AdminService,
  CreateInviteResponseSchema,
  DrainGatewayResponseSchema,
  GetStatsResponseSchema,
  type Invite,
  ListInvitesResponseSchema,
  type LookupUserResponse,
  LookupUserResponseSchema,
  RevokeDeviceResponseSchema,
  RevokeInviteResponseSchema,
} from "../../gen/switchboard/internal/v1/admin_pb.js";
import type { DeviceRoute } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { Device } from "../../gen/switchboard/v1/accounts_pb.js";
import { environment } from "../common/config.js";
import { internalCredential, sendInternalCredential } from "../common/internal-auth.js";

/** Where admin output goes; replaceable so the commands can run inside tests. */
export interface AdminIo {
  /** A line of results. */
  out(line: string): void;
  /** A line of diagnostics. */
  err(line: string): void;
  /** The environment to read SWITCHBOARD_TOKEN_KEY from. */
  env: NodeJS.ProcessEnv;
}

const processIo: AdminIo = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  env: environment(),
};

/** Options every admin command takes. */
interface AdminOptions {
  url: string[];
  dataDir?: string;
  json?: boolean;
}

/** Zeros and empty lists are printed too, so scripts find every field. */
const JSON_OPTIONS = { alwaysEmitImplicit: true } as const;

/** An error already phrased for the operator. */
class AdminError extends Error {}

/**
 * The deployment's internal credential: derived from SWITCHBOARD_TOKEN_KEY, or from the token key
 * a one-process server generated into its data directory (`--data-dir`, which wins when given).
 */
export async function adminCredential(dataDir: string | undefined, env: NodeJS.ProcessEnv): Promise<string> {
  let key: Buffer;
  let source: string;
  if (dataDir !== undefined) {
    source = join(dataDir, "token.key");
    try {
      key = Buffer.from((await readFile(source, "utf8")).trim(), "base64url");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new AdminError(
        code === "ENOENT"
          ? `no token key at ${source}: is --data-dir the data directory of a one-process server that has started once?`
          : `cannot read ${source}: ${(err as Error).message}`,
      );
    }
  } else if (env.SWITCHBOARD_TOKEN_KEY) {
    source = "SWITCHBOARD_TOKEN_KEY";
    key = Buffer.from(env.SWITCHBOARD_TOKEN_KEY, "base64url");
  } else {
    throw new AdminError(
      "no internal credential: set SWITCHBOARD_TOKEN_KEY to the deployment's token key, or pass " +
        "--data-dir <dir> of a one-process server (its <dir>/token.key)",
    );
  }
  if (key.length < 32) throw new AdminError(`${source} must encode at least 32 bytes (base64url)`);
  return internalCredential(key);
}

/** One admin client per process URL; close() drops the connections so the command can exit. */
function connect(url: string, credential: string): { client: Client<typeof AdminService>; close(): void } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new AdminError(`--url ${url}: not a URL (e.g. http://127.0.0.1:7420)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new AdminError(`--url ${url}: expected http:// or https://`);
  const sessionManager = new Http2SessionManager(url);
  const transport = createGrpcTransport({
    baseUrl: url,
    sessionManager,
    interceptors: [sendInternalCredential(credential)],
    defaultTimeoutMs: 15_000,
  });
  return { client: createClient(AdminService, transport), close: () => sessionManager.abort() };
}

/** One line for an operator: what went wrong at which process, and what to do about it. */
export function describeAdminError(url: string, err: unknown): string {
  if (err instanceof AdminError) return err.message;
  if (err instanceof ConnectError) {
    switch (err.code) {
      case Code.Unauthenticated:
        return (
          `${url} refused the internal credential: SWITCHBOARD_TOKEN_KEY (or --data-dir) is not ` +
          `this deployment's token key [${err.rawMessage}]`
        );
      case Code.Unimplemented:
        return `${url} does not serve the admin service (an older version, or not a Switchboard process)`;
      case Code.Unavailable:
        if (/ECONNREFUSED|ENOTFOUND|ETIMEDOUT|EHOSTUNREACH/.test(err.rawMessage))
          return `${url} is not reachable: ${err.rawMessage}`;
        break;
      default:
        break;
    }
    return `${url}: ${err.rawMessage} [${Code[err.code] ?? err.code}]`;
  }
  return `${url}: ${err instanceof Error ? err.message : String(err)}`;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Milliseconds as "3d 4h", "12m 5s", "800ms". */
function duration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const s = Math.floor(ms / 1000);
  const parts: Array<[number, string]> = [
    [Math.floor(s / 86400), "d"],
    [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "m"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  return parts
    .slice(first, first + 2)
    .map(([n, u]) => `${n}${u}`)
    .join(" ");
}

function bytes(n: bigint): string {
  const mib = Number(n) / (1024 * 1024);
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${mib.toFixed(1)} MiB`;
}

function time(ms: bigint): string {
  return ms === 0n ? "-" : new Date(Number(ms)).toISOString().replace(/\.\d+Z$/, "Z");
}

/** Shard numbers as ranges: 0-3, 8, 10-15. */
function ranges(values: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < values.length; ) {
    let j = i;
    while (j + 1 < values.length && values[j + 1] === values[j]! + 1) j++;
    out.push(j === i ? `${values[i]}` : `${values[i]}-${values[j]}`);
    i = j + 1;
  }
  return out.join(", ") || "none";
}

const TTL_UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "7d", "12h", "30m", "90s" as milliseconds. */
export function parseTtl(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text.trim());
  if (match === null) throw new AdminError(`--ttl ${text}: expected a number and a unit: 90s, 30m, 12h, 7d`);
  return Number(match[1]) * TTL_UNITS[match[2]!]!;
}

/** What state an invite is in at `nowMs`. */
function inviteState(i: Invite, nowMs: number): string {
  if (i.revokedAtMs !== 0n) return "revoked";
  if (BigInt(nowMs) >= i.expiresAtMs) return "expired";
  if (i.usesLeft === 0) return "used up";
  return "active";
}

/** Rows of cells as aligned columns. */
function table(rows: readonly string[][], indent = "  "): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map(
    (row) =>
      indent +
      row
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
  );
}

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
      .option("--json", "print the answer as JSON (one object per line)");

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
          connection = connect(url, credential);
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
      const connection = connect(url, credential);
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
}
