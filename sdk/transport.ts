import { create } from "@bufbuild/protobuf";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
  type StreamResponse,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService, CreateTokenRequestSchema } from "../gen/switchboard/v1/accounts_pb.js";
import { CallService } from "../gen/switchboard/v1/calls_pb.js";
import { ConversationService } from "../gen/switchboard/v1/conversations_pb.js";
import { GatewayService } from "../gen/switchboard/v1/gateway_pb.js";
import { KeyService } from "../gen/switchboard/v1/keys_pb.js";
import { MediaService } from "../gen/switchboard/v1/media_pb.js";
import type { StreamFallback } from "./types.js";

/** The RPCs that run before a device has a token. */
const UNAUTHENTICATED_METHODS = new Set(["Register", "CreateToken", "LinkDevice"]);

/** Refresh a token when less than this share of its lifetime is left. */
const REFRESH_SHARE = 0.2;
/** ...or less than this many milliseconds, whichever is larger. */
const REFRESH_MARGIN_MS = 30_000;

const rejectedCredentials = new WeakSet<object>();

/**
 * The error for a device credential the server refused: the device was revoked or its secret is
 * wrong. Retrying cannot help, so the client stops. A plain ConnectError, marked, because
 * ConnectError's instanceof check does not survive subclassing.
 */
export function credentialRejected(cause: ConnectError): ConnectError {
  const error = new ConnectError(
    `device credential rejected: ${cause.rawMessage}`,
    Code.Unauthenticated,
    undefined,
    undefined,
    cause,
  );
  rejectedCredentials.add(error);
  return error;
}

/** True for an error from credentialRejected (or one caused by it). */
export function isCredentialRejected(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; typeof e === "object" && e !== null && depth < 5; depth++) {
    if (rejectedCredentials.has(e)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * True when an error was raised on this side of the connection by the network (a reset, a
 * refused or dropped socket) rather than sent by the server. connect-node reports a connection
 * reset as ABORTED, the very code a gateway uses to say "a newer stream of this device replaced
 * this one", so the code alone cannot tell them apart; the Node system error that connect-node
 * keeps as the cause can (a status from the server has no such cause).
 */
export function isNetworkFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; typeof e === "object" && e !== null && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^(E[A-Z]+|ERR_HTTP2_|ERR_STREAM_)/.test(code)) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** Keeps a device's access token fresh: refreshed before expiry, one refresh at a time. */
export class TokenSource {
  private token: string | undefined;
  private expiresAtMs = 0;
  private issuedAtMs = 0;
  private refreshing: Promise<string> | undefined;

  constructor(
    private readonly accounts: Client<typeof AccountService>,
    private readonly deviceId: string,
    private readonly deviceSecret: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** A token valid for a while yet. */
  async get(): Promise<string> {
    if (this.token !== undefined && !this.expiring()) return this.token;
    return this.refresh();
  }

  /** True if the cached token was issued less than `ms` ago (a refresh would not help). */
  freshWithin(ms: number): boolean {
    return this.token !== undefined && this.now() - this.issuedAtMs < ms;
  }

  /** Drops the cached token, e.g. after the server refused it. */
  invalidate(): void {
    this.token = undefined;
  }

  /** Fetches a new token; concurrent callers share one request. */
  refresh(): Promise<string> {
    this.refreshing ??= this.fetch().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private expiring(): boolean {
    const lifetime = this.expiresAtMs - this.issuedAtMs;
    const margin = Math.max(REFRESH_MARGIN_MS, lifetime * REFRESH_SHARE);
    return this.now() >= this.expiresAtMs - margin;
  }

  private async fetch(): Promise<string> {
    const issuedAtMs = this.now();
    let response: Awaited<ReturnType<Client<typeof AccountService>["createToken"]>>;
    try {
      response = await this.accounts.createToken(
        create(CreateTokenRequestSchema, { deviceId: this.deviceId, deviceSecret: this.deviceSecret }),
      );
    } catch (err) {
      const error = ConnectError.from(err);
      if (error.code === Code.Unauthenticated || error.code === Code.PermissionDenied) {
        throw credentialRejected(error);
      }
      throw error;
    }
    this.token = response.accessToken;
    this.issuedAtMs = issuedAtMs;
    this.expiresAtMs = Number(response.expiresAtMs);
    return response.accessToken;
  }
}

/** The typed clients of one server connection. */
export interface ServerConnection {
  /** AccountService. */
  accounts: Client<typeof AccountService>;
  /** ConversationService. */
  conversations: Client<typeof ConversationService>;
  /** GatewayService. */
  gateway: Client<typeof GatewayService>;
  /** KeyService (the key directory for end-to-end encryption). */
  keys: Client<typeof KeyService>;
  /** MediaService (upload and download URLs for encrypted attachments). */
  media: Client<typeof MediaService>;
  /** CallService (TURN credentials for calls). */
  calls: Client<typeof CallService>;
  /** Present once credentials were attached. */
  tokens: TokenSource | undefined;
  /**
   * Opens later device streams at `url`, the stream port a gateway named in its ready frame
   * (ReadyFrame.stream_url), as if it had been given as `streamUrl`, with the same fallback to the
   * server URL; "" (a gateway naming none) forgets the one named before. Refused (false) when
   * `streamUrl` was given, when `learnStreamUrl` is false, when nothing changes, and when `url`
   * is not on a host of the server URL (or an alternate), or a name under it, or would give up
   * TLS the server URL has (sameHostStreamUrl). The stream open now stays where it is, unless it
   * is on a stream port named before, whose connection closes (the stream then opens again).
   */
  adoptStreamUrl(url: string): boolean;
  /**
   * The stream port this connection learned (adoptStreamUrl, or ConnectionOptions.learnedStreamUrl)
   * and opens device streams at; undefined when it learned none, or was given `streamUrl`.
   */
  readonly learnedStreamUrl: string | undefined;
  /** Closes the HTTP/2 connection, ending every call on it. */
  close(): void;
}

/** Options of connectToServer. */
export interface ConnectionOptions {
  /** Base URL, e.g. "http://127.0.0.1:7420" (h2c) or an https URL. */
  serverUrl: string;
  /** The device's credential; without it only Register, CreateToken and LinkDevice work. */
  credential?: { deviceId: string; deviceSecret: string };
  /** Per-call timeout of unary calls, in milliseconds. Default 30,000. */
  unaryTimeoutMs?: number;
  /**
   * Other gateways of the same deployment. A call that fails because its gateway is unreachable
   * or shutting down moves later calls (and the next stream) to the next one, round robin.
   */
  alternateUrls?: string[];
  /**
   * The deployment's stream port (the server's SWITCHBOARD_STREAM_PORT), e.g.
   * "http://127.0.0.1:7430": the device stream (GatewayService.Connect) is opened there, and every
   * other call still goes to `serverUrl` (or the alternates). Unset: the stream goes to
   * `serverUrl` too, which serves it either way.
   */
  streamUrl?: string;
  /** When the stream port cannot be reached: see StreamFallback. */
  streamFallback?: StreamFallback;
  /**
   * Whether a stream port the gateway names in its ready frame is used for later streams when
   * `streamUrl` is not given (ServerConnection.adoptStreamUrl). Default true.
   */
  learnStreamUrl?: boolean;
  /**
   * A stream port learned by an earlier connection (the SDK keeps it in the profile), so that the
   * first stream of a new process opens there too. Taken under adoptStreamUrl's rules: ignored
   * when `streamUrl` is given, when `learnStreamUrl` is false, or when it is not on a host of the
   * server URLs, so a profile opened against another server never sends its token to the old one.
   */
  learnedStreamUrl?: string;
}

const STREAM_FALLBACK_AFTER_MS = 5_000;
const STREAM_PORT_RETRY_MS = 60_000;
const STREAM_PORT_OPEN_TIMEOUT_MS = 10_000;

/** Errors that say "this gateway cannot serve you now", as opposed to "your request is wrong". */
function gatewayUnavailable(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return (
    code === Code.Unavailable || code === Code.Unknown || code === Code.Internal || isNetworkFailure(err)
  );
}

/**
 * A transport over several gateways. Calls go to the current one; when one fails as unavailable
 * (refused, reset, draining) the next call goes to the next gateway. The failed call itself is
 * not retried here: the client's own retry (same client_msg_id, or the stream's reconnect loop)
 * decides that, so nothing is sent twice behind its back.
 */
function failoverTransport(transports: Transport[]): Transport {
  let current = 0;
  const failed = (index: number, err: unknown): void => {
    // Only the first failure of a gateway moves on; concurrent calls failing on it must not skip
    // the next gateway too.
    if (gatewayUnavailable(err) && current === index) current = (index + 1) % transports.length;
  };
  return {
    async unary(...args) {
      const index = current;
      try {
        return await transports[index]!.unary(...args);
      } catch (err) {
        failed(index, err);
        throw err;
      }
    },
    async stream<
      I extends Parameters<Transport["stream"]>[0]["input"],
      O extends Parameters<Transport["stream"]>[0]["output"],
    >(...args: Parameters<Transport["stream"]>) {
      const index = current;
      let response: StreamResponse<I, O>;
      try {
        response = (await transports[index]!.stream(...args)) as StreamResponse<I, O>;
      } catch (err) {
        failed(index, err);
        throw err;
      }
      const messages = response.message;
      return {
        ...response,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            failed(index, err);
            throw err;
          }
        })(),
      };
    },
  } as Transport;
}

/**
 * Opens a gRPC (HTTP/2) connection to a Switchboard server. Every call except the three
 * credential RPCs carries the device's bearer token; a unary call refused as Unauthenticated is
 * retried once with a new token, since the cached one may have expired or been issued by a server
 * that has since rotated keys.
 */
export function connectToServer(options: ConnectionOptions): ServerConnection {
  const urls = [options.serverUrl, ...(options.alternateUrls ?? [])].map((u) => u.replace(/\/+$/, ""));
  // Our own session managers let close() end the connections at once; without them the process
  // lingers until the idle timeout.
  const sessionManagers = urls.map(
    (baseUrl) => new Http2SessionManager(baseUrl, { pingIntervalMs: 15_000, pingTimeoutMs: 10_000 }),
  );
  let tokens: TokenSource | undefined;

  const auth: Interceptor = (next) => async (req) => {
    if (tokens === undefined || UNAUTHENTICATED_METHODS.has(req.method.name)) return next(req);
    const source = tokens;
    req.header.set("authorization", `Bearer ${await source.get()}`);
    if (req.stream) return next(req);
    try {
      return await next(req);
    } catch (err) {
      const error = ConnectError.from(err);
      if (error.code !== Code.Unauthenticated || source.freshWithin(1_000)) throw error;
      source.invalidate();
      req.header.set("authorization", `Bearer ${await source.get()}`);
      return next(req);
    }
  };

  const over = (make: (baseUrl: string, sessionManager: Http2SessionManager) => Transport): Transport => {
    const transports = urls.map((baseUrl, i) => make(baseUrl, sessionManagers[i]!));
    return transports.length === 1 ? transports[0]! : failoverTransport(transports);
  };
  const bare = over((baseUrl, sessionManager) => createGrpcTransport({ baseUrl, sessionManager }));
  const accountsBare = createClient(AccountService, bare);
  if (options.credential !== undefined) {
    tokens = new TokenSource(accountsBare, options.credential.deviceId, options.credential.deviceSecret);
  }
  const transport = over((baseUrl, sessionManager) =>
    createGrpcTransport({
      baseUrl,
      sessionManager,
      interceptors: [auth],
      defaultTimeoutMs: options.unaryTimeoutMs ?? 30_000,
    }),
  );
  // The stream port serves the device stream and nothing else: only that call goes there, once
  // there is one (given, or named by a gateway).
  let streamPort: { url: string; sessions: Http2SessionManager; open: Transport["stream"] } | undefined;
  let closed = false;
  const useStreamPort = (url: string): void => {
    // A port named again elsewhere replaces the last: its connection closes, and a stream on it
    // opens again at the new one. One connection to a stream port at most, however often named.
    streamPort?.sessions.abort();
    const baseUrl = url.replace(/\/+$/, "");
    const sessions = new Http2SessionManager(baseUrl, { pingIntervalMs: 15_000, pingTimeoutMs: 10_000 });
    const streams = createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors: [auth] });
    streamPort = { url, sessions, open: streamPortFirst(streams, transport, options.streamFallback ?? {}) };
  };
  const adoptStreamUrl = (url: string): boolean => {
    // After close, a connection opened here would outlive it.
    if (closed || options.streamUrl !== undefined || options.learnStreamUrl === false) return false;
    if (url === "") {
      // The deployment names no stream port now (it took it away): later streams stay here
      // instead of trying a port that is gone before every fallback.
      if (streamPort === undefined) return false;
      streamPort.sessions.abort();
      streamPort = undefined;
      return true;
    }
    if (streamPort?.url === url || !sameHostStreamUrl(url, urls)) return false;
    useStreamPort(url);
    return true;
  };
  if (options.streamUrl !== undefined) useStreamPort(options.streamUrl);
  else if (options.learnedStreamUrl !== undefined) adoptStreamUrl(options.learnedStreamUrl);
  const gatewayTransport = streamOnly(transport, (...args) =>
    streamPort === undefined ? transport.stream(...args) : streamPort.open(...args),
  );
  return {
    accounts: createClient(AccountService, transport),
    conversations: createClient(ConversationService, transport),
    gateway: createClient(GatewayService, gatewayTransport),
    keys: createClient(KeyService, transport),
    media: createClient(MediaService, transport),
    calls: createClient(CallService, transport),
    tokens,
    adoptStreamUrl,
    get learnedStreamUrl() {
      // A port the app gave is not learned: adoptStreamUrl never runs beside it.
      return options.streamUrl === undefined ? streamPort?.url : undefined;
    },
    close: () => {
      closed = true;
      for (const m of sessionManagers) m.abort();
      streamPort?.sessions.abort();
    },
  };
}

/**
 * Whether a stream port a gateway named may take the device's stream and its bearer token: an
 * http: or https: URL on the host of one of the URLs the app gave, or on a name under it (a
 * deployment behind an ingress routes by name: stream.chat.example.com for chat.example.com), and
 * https: if that one is. A gateway may move its devices' streams within its own names, not to
 * anyone else's, and not into the clear.
 */
export function sameHostStreamUrl(url: string, serverUrls: readonly string[]): boolean {
  let named: URL;
  try {
    named = new URL(url);
  } catch {
    return false;
  }
  if (named.protocol !== "http:" && named.protocol !== "https:") return false;
  if (named.username !== "" || named.password !== "") return false;
  return serverUrls.some((s) => {
    const server = new URL(s);
    const host = named.hostname === server.hostname || named.hostname.endsWith(`.${server.hostname}`);
    return host && (server.protocol !== "https:" || named.protocol === "https:");
  });
}

/** A transport that sends the device stream (GatewayService.Connect) one way and the rest another. */
function streamOnly(rest: Transport, deviceStream: Transport["stream"]): Transport {
  return {
    unary: (...args) => rest.unary(...args),
    stream: (...args: Parameters<Transport["stream"]>) =>
      args[0] === GatewayService.method.connect ? deviceStream(...args) : rest.stream(...args),
  } as Transport;
}

/**
 * Opens streams on the stream port while it answers, and on `fallback` (the server URL) once it
 * has failed for StreamFallback.afterMs, until StreamFallback.retryMs after its last failure.
 * Only the opening counts: a stream that opened and later broke says nothing of the port that
 * its next opening does not say better. An opening the port leaves unanswered (a firewall that
 * drops what it does not let through answers nothing at all) fails after
 * StreamFallback.openTimeoutMs. The failed opening itself is not retried here; the
 * stream's reconnect loop makes the next attempt, as for any stream that fails.
 */
function streamPortFirst(
  streamPort: Transport,
  fallback: Transport,
  timing: StreamFallback,
): Transport["stream"] {
  const afterMs = timing.afterMs ?? STREAM_FALLBACK_AFTER_MS;
  const retryMs = timing.retryMs ?? STREAM_PORT_RETRY_MS;
  const openTimeoutMs = timing.openTimeoutMs ?? STREAM_PORT_OPEN_TIMEOUT_MS;
  /** When the stream port's current run of failed openings began; undefined while it answers. */
  let failingSince: number | undefined;
  let lastFailure = 0;
  const open = async (...args: Parameters<Transport["stream"]>) => {
    const now = Date.now();
    if (failingSince !== undefined && now - failingSince >= afterMs && now - lastFailure < retryMs) {
      return fallback.stream(...args);
    }
    const [method, signal, timeoutMs, header, input, contextValues] = args;
    // The caller's signal still ends the stream after it opened; the timer only its opening.
    const opening = new AbortController();
    const follow = () => opening.abort(signal?.reason);
    if (signal?.aborted) follow();
    else signal?.addEventListener("abort", follow, { once: true });
    const timer = setTimeout(
      () =>
        opening.abort(
          new ConnectError(`the stream port did not answer within ${openTimeoutMs} ms`, Code.Unavailable),
        ),
      openTimeoutMs,
    );
    try {
      const response = await streamPort.stream(
        method,
        opening.signal,
        timeoutMs,
        header,
        input,
        contextValues,
      );
      failingSince = undefined;
      return response;
    } catch (err) {
      if (gatewayUnavailable(err)) {
        lastFailure = Date.now();
        failingSince ??= lastFailure;
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  };
  // Generic in the call's message types as Transport["stream"] is; the calls pass through whole.
  return open as Transport["stream"];
}

/**
 * An unbounded-by-design queue feeding a request stream: the client writes frames whenever it
 * likes and the transport pulls them. Its producers are bounded themselves (sends by the
 * in-flight limit, acks by coalescing), so it stays small.
 */
export class FrameQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  /** Queues a frame; ignored once the queue ended. */
  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.wake?.();
  }

  /** Ends the request stream after the frames already queued. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }

  /** True once end() was called. */
  get closed(): boolean {
    return this.ended;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}
