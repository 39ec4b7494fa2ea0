import { readFile } from "node:fs/promises";
import { userInfo } from "node:os";
import { join } from "node:path";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../../../gen/switchboard/internal/v1/admin_pb.js";
import { internalCredential, sendInternalCredential } from "../../common/internal-auth.js";

/** Reaching the admin service of running processes: the credential, the clients, the errors. */

/** An error already phrased for the operator. */
export class AdminError extends Error {}

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

/**
 * The header naming the operator in the servers' audit log (services/admin/audit.ts; the same
 * string, not imported, so the CLI does not load the admin service).
 */
const OPERATOR_HEADER = "x-switchboard-operator";

/** The login name, the default operator of the audit log. */
function loginName(): string {
  try {
    return userInfo().username;
  } catch {
    return "";
  }
}

/**
 * One admin client per process URL; close() drops the connections so the command can exit.
 * `operator` names who acts in the servers' audit log (the login name by default).
 */
export function connect(
  url: string,
  credential: string,
  operator: string = loginName(),
): { client: Client<typeof AdminService>; close(): void } {
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
    interceptors: [
      sendInternalCredential(credential),
      (next) => (req) => {
        // A header value is printable ASCII; anything else becomes "?".
        if (operator !== "") req.header.set(OPERATOR_HEADER, operator.replace(/[^\x20-\x7e]/g, "?"));
        return next(req);
      },
    ],
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
