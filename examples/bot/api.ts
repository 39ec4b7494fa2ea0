import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../../gen/switchboard/v1/conversations_pb.js";
import { GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";

/** What the bot keeps between runs, in one JSON file (mode 0600: the secret is a password). */
export interface BotState {
  userId: string;
  deviceId: string;
  /** From Register; exchanged for access tokens with CreateToken. Shown once by the server. */
  deviceSecret: string;
}

/** The generated clients, authenticated as the bot's device. */
export interface Api {
  /** AccountService without a token: for Register, CreateToken and LinkDevice. */
  signup: Client<typeof AccountService>;
  /** AccountService with the token: every other account call. */
  accounts: Client<typeof AccountService>;
  conversations: Client<typeof ConversationService>;
  gateway: Client<typeof GatewayService>;
  close(): void;
}

/**
 * One HTTP/2 connection for every call. Register and CreateToken go without a token; every
 * other call gets `authorization: Bearer <token>`, refreshed a minute before it expires.
 */
export function connectApi(server: string, state: BotState | undefined): Api {
  // Pings detect a connection that died silently (a NAT timeout, a lost route), so a stream
  // that would otherwise wait forever fails with UNAVAILABLE and the bot reconnects.
  const sessions = new Http2SessionManager(server, { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 });
  const signup = createClient(
    AccountService,
    createGrpcTransport({ baseUrl: server, sessionManager: sessions }),
  );
  let token = "";
  let expiresAtMs = 0;
  const auth: Interceptor = (next) => async (req) => {
    if (state === undefined) throw new ConnectError("register first", Code.Unauthenticated);
    if (Date.now() > expiresAtMs - 60_000) {
      const t = await signup.createToken({ deviceId: state.deviceId, deviceSecret: state.deviceSecret });
      token = t.accessToken;
      expiresAtMs = Number(t.expiresAtMs);
    }
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const authed = createGrpcTransport({ baseUrl: server, sessionManager: sessions, interceptors: [auth] });
  return {
    signup,
    accounts: createClient(AccountService, authed),
    conversations: createClient(ConversationService, authed),
    gateway: createClient(GatewayService, authed),
    close: () => sessions.abort(),
  };
}

/** Reads the bot's state file, or registers the bot's account and writes a new one. */
export async function loadOrRegister(server: string, path: string, username: string): Promise<BotState> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as BotState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const api = connectApi(server, undefined);
  try {
    const r = await api.signup.register({ username, displayName: "Echo bot", deviceName: "bot" });
    const state: BotState = {
      userId: r.user!.userId,
      deviceId: r.credential!.deviceId,
      deviceSecret: r.credential!.deviceSecret,
    };
    await saveState(path, state);
    return state;
  } catch (err) {
    const e = ConnectError.from(err);
    if (e.code === Code.AlreadyExists)
      throw new Error(`username ${username} is taken; pass that bot's --state file or another --username`);
    throw e;
  } finally {
    api.close();
  }
}

/** Writes the state file atomically (a crash leaves the old file or the new one, never half). */
export async function saveState(path: string, state: BotState): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}
