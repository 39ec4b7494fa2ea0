import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "../../gen/switchboard/internal/v1/admin_pb.js";
import { PEER_HEADER } from "../accounts/index.js";
import { wireCodeOf } from "../common/boundary.js";
import type { Logger } from "../common/log.js";

/**
 * The audit trail of operator actions: one structured log line per admin call (who, what, on
 * what, with what outcome; pino adds when), `"audit":{...}` with the message "admin action", at
 * info for a call that succeeded and warn for one refused. GetStats, polled by dashboards, is not
 * audited. There is no separate audit store: the process log is where operators already collect
 * lines, and its JSON makes the trail queryable (`jq 'select(.audit)'`).
 *
 * Who: the internal credential says only that the caller holds the deployment's key, so the line
 * names the operator the CLI declares (OPERATOR_HEADER, the --operator option or the login name;
 * self-declared, like a commit author) and the address the call came from.
 */

/** The header the CLI names its operator in. */
export const OPERATOR_HEADER = "x-switchboard-operator";

/** Request fields an audit line records: ids and operator input, never a secret. */
const REQUEST_FIELDS = [
  "user",
  "userId",
  "reportedUser",
  "deviceId",
  "inviteId",
  "reason",
  "uses",
  "ttlMs",
  "note",
  "limit",
] as const;
/** Response strings it records, by name only (a token is never one of them). */
const RESPONSE_STRINGS = new Set(["userId", "username", "instanceId", "inviteId", "deviceId"]);

/** The operator as declared: printable, at most 64 characters. */
function operatorOf(ctx: HandlerContext): string {
  const raw = ctx.requestHeader.get(OPERATOR_HEADER) ?? "";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: a log line must not carry control characters
  const clean = raw.replace(/[\u0000-\u001f\u007f]/g, "").slice(0, 64);
  return clean === "" ? "unnamed" : clean;
}

function scalar(value: unknown): unknown {
  if (typeof value === "bigint") return Number(value);
  if (typeof value === "number" || typeof value === "boolean") return value;
  if (typeof value === "string" && value !== "") return value;
  return undefined;
}

/** What the call asked: the named request fields that are set. */
function requestOf(request: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const fields = request as Record<string, unknown>;
  for (const name of REQUEST_FIELDS) {
    const value = scalar(fields[name]);
    if (value !== undefined && value !== 0) out[name] = value;
  }
  return out;
}

/**
 * What a response says was done: its numbers and flags, the ids it names (of the user, invite
 * or device it returns too), and its lists by length only.
 */
function outcomeOf(response: unknown, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(response as Record<string, unknown>)) {
    if (Array.isArray(value)) {
      if (depth === 0) out[key] = value.length;
    } else if (typeof value === "object" && value !== null) {
      if (depth === 0 && ["user", "invite", "device"].includes(key)) Object.assign(out, outcomeOf(value, 1));
    } else if (typeof value === "string") {
      if (RESPONSE_STRINGS.has(key) && value !== "") out[key] = value;
    } else if (depth === 0) {
      const v = scalar(value);
      if (v !== undefined) out[key] = v;
    }
  }
  return out;
}

function errorCode(err: unknown): string {
  const code = wireCodeOf(err) ?? ConnectError.from(err).code;
  return Code[code] ?? String(code);
}

/** The admin service with every call but GetStats written to the audit trail. */
export function audited(
  impl: ServiceImpl<typeof AdminService>,
  log: Logger | undefined,
): ServiceImpl<typeof AdminService> {
  if (log === undefined) return impl;
  const out: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(impl) as Array<
    [string, (req: unknown, ctx: HandlerContext) => Promise<unknown>]
  >) {
    if (name === "getStats") {
      out[name] = method;
      continue;
    }
    out[name] = async (req: unknown, ctx: HandlerContext) => {
      const who = { operator: operatorOf(ctx), peer: ctx.requestHeader.get(PEER_HEADER) ?? "unknown" };
      const target = requestOf(req);
      try {
        const response = await method(req, ctx);
        log.info(
          { audit: { action: name, ...who, ...target, ok: true, ...outcomeOf(response) } },
          "admin action",
        );
        return response;
      } catch (err) {
        log.warn(
          { audit: { action: name, ...who, ...target, ok: false, code: errorCode(err) } },
          "admin action",
        );
        throw err;
      }
    };
  }
  return out as ServiceImpl<typeof AdminService>;
}
