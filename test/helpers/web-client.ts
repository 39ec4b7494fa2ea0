import {
  type Client,
  type ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as web from "@connectrpc/connect-web";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectResponse, GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";

/** The web protocols a browser speaks over HTTP/1.1. */
export type WebProtocol = "connect" | "grpc-web";

/**
 * Whose transport: connect-node's with httpVersion "1.1", or connect-web's, the browser library
 * itself, on Node's fetch (HTTP/1.1, as a browser talking to a cleartext server).
 */
export type WebLibrary = "connect-node" | "connect-web";

/**
 * A device as a browser is one, from Node: Connect or gRPC-Web over HTTP/1.1 (connect-node's
 * transports with httpVersion "1.1", or connect-web's on fetch), a Subscribe stream for
 * receiving and unary calls for everything the device says.
 */
export class WebDevice {
  readonly transport: Transport;
  readonly accounts: Client<typeof AccountService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly gateway: Client<typeof GatewayService>;
  token = "";
  userId = "";
  deviceId = "";
  /** Frames of the current Subscribe stream. */
  frames: ConnectResponse[] = [];
  /** How the current Subscribe stream ended, once it did. */
  ended: { error: ConnectError | undefined } | undefined;
  private abort: AbortController | undefined;
  private waiters: Array<() => void> = [];

  constructor(
    readonly url: string,
    readonly protocol: WebProtocol,
    readonly library: WebLibrary = "connect-node",
  ) {
    const auth: Interceptor = (next) => (req) => {
      if (this.token) req.header.set("authorization", `Bearer ${this.token}`);
      return next(req);
    };
    if (library === "connect-web") {
      const options = { baseUrl: url, interceptors: [auth] };
      this.transport =
        protocol === "connect" ? web.createConnectTransport(options) : web.createGrpcWebTransport(options);
    } else {
      const options = { baseUrl: url, httpVersion: "1.1" as const, interceptors: [auth] };
      this.transport =
        protocol === "connect" ? createConnectTransport(options) : createGrpcWebTransport(options);
    }
    this.accounts = createClient(AccountService, this.transport);
    this.conversations = createClient(ConversationService, this.transport);
    this.gateway = createClient(GatewayService, this.transport);
  }

  /** Registers a user with this device and signs in. */
  async register(username: string): Promise<void> {
    const r = await this.accounts.register({ username, deviceName: `${this.library}-${this.protocol}` });
    this.userId = r.user!.userId;
    this.deviceId = r.credential!.deviceId;
    const t = await this.accounts.createToken({
      deviceId: this.deviceId,
      deviceSecret: r.credential!.deviceSecret,
    });
    this.token = t.accessToken;
  }

  /** Opens a Subscribe stream; its frames collect in `frames` (from an empty list). */
  subscribe(presenceUserIds: string[] = []): void {
    this.frames = [];
    this.ended = undefined;
    const abort = new AbortController();
    this.abort = abort;
    void (async () => {
      let error: ConnectError | undefined;
      try {
        for await (const r of this.gateway.subscribe({ presenceUserIds }, { signal: abort.signal })) {
          if (r.frame !== undefined) this.frames.push(r.frame);
          this.wake();
        }
      } catch (err) {
        error = err as ConnectError;
      }
      if (this.abort === abort) {
        this.ended = { error };
        this.wake();
      }
    })();
  }

  /** Goes away as a closed tab does: the stream's request is aborted. */
  unsubscribe(): void {
    this.abort?.abort();
    this.abort = undefined;
  }

  /** Waits until a frame of the current stream matches, or the stream ends, or 10 s pass. */
  async waitFor<T>(what: string, find: (frames: ConnectResponse[]) => T | undefined): Promise<T> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const found = find(this.frames);
      if (found !== undefined) return found;
      if (this.ended !== undefined) {
        throw new Error(`stream ended waiting for ${what}: ${this.ended.error?.message ?? "cleanly"}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${this.describe()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Every entry of a conversation in message frames of the current stream, in arrival order. */
  entries(conversationId: string): Entry[] {
    return this.frames.flatMap((f) =>
      f.frame.case === "message"
        ? f.frame.value.entries.filter((e) => e.conversationId === conversationId)
        : [],
    );
  }

  /** The frame cases of the current stream, for failure messages. */
  describe(): string {
    return this.frames.map((f) => f.frame.case).join(", ");
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
