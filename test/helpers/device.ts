import { create } from "@bufbuild/protobuf";
import {
  type Client,
  type ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../../gen/switchboard/v1/conversations_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  GatewayService,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { messageEntry } from "./entries.js";

/** The value of a server frame of case C. */
export type FrameValue<C extends NonNullable<ConnectResponse["frame"]["case"]>> = Extract<
  ConnectResponse["frame"],
  { case: C }
>["value"];

/**
 * A raw protocol client for tests: one device's credentials, unary clients and at most one
 * stream, with every server frame recorded so tests can assert on exactly what arrived. It does
 * none of the SDK's reordering or retrying, so it sees the server's behaviour as it is.
 */
export class TestDevice {
  readonly sessions: Http2SessionManager;
  readonly transport: Transport;
  readonly accounts: Client<typeof AccountService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly gateway: Client<typeof GatewayService>;
  token = "";
  frames: ConnectResponse[] = [];
  streamError: ConnectError | undefined;
  streamEnded = false;
  private outgoing: ConnectRequest[] = [];
  private wakeWriter: (() => void) | undefined;
  private closed = false;
  private waiters: Array<() => void> = [];
  private stream: Promise<void> | undefined;

  constructor(
    readonly url: string,
    readonly userId: string,
    readonly deviceId: string,
    readonly secret: string,
    readonly username: string,
  ) {
    this.sessions = new Http2SessionManager(url);
    const auth: Interceptor = (next) => (req) => {
      if (this.token) req.header.set("authorization", `Bearer ${this.token}`);
      return next(req);
    };
    this.transport = createGrpcTransport({
      baseUrl: url,
      sessionManager: this.sessions,
      interceptors: [auth],
    });
    this.accounts = createClient(AccountService, this.transport);
    this.conversations = createClient(ConversationService, this.transport);
    this.gateway = createClient(GatewayService, this.transport);
  }

  /** Registers a new user with its first device and fetches a token. */
  static async register(url: string, username: string): Promise<TestDevice> {
    const bootstrap = new TestDevice(url, "", "", "", username);
    const r = await bootstrap.accounts.register({ username, deviceName: "test" });
    bootstrap.sessions.abort();
    const device = new TestDevice(
      url,
      r.user!.userId,
      r.credential!.deviceId,
      r.credential!.deviceSecret,
      username,
    );
    await device.login();
    return device;
  }

  /** Links another device to this device's user. */
  async link(name = "second"): Promise<TestDevice> {
    const { code } = await this.accounts.createLinkCode({});
    const bootstrap = new TestDevice(this.url, "", "", "", this.username);
    const r = await bootstrap.accounts.linkDevice({ code, deviceName: name });
    bootstrap.sessions.abort();
    const device = new TestDevice(
      this.url,
      r.user!.userId,
      r.credential!.deviceId,
      r.credential!.deviceSecret,
      this.username,
    );
    await device.login();
    return device;
  }

  /** Exchanges the credential for a fresh token. */
  async login(): Promise<void> {
    const t = await this.accounts.createToken({ deviceId: this.deviceId, deviceSecret: this.secret });
    this.token = t.accessToken;
  }

  /** Opens the stream; frames accumulate in `frames`. */
  connect(): void {
    this.frames = [];
    this.streamError = undefined;
    this.streamEnded = false;
    this.closed = false;
    this.outgoing = [];
    const self = this;
    async function* requests(): AsyncGenerator<ConnectRequest> {
      for (;;) {
        const next = self.outgoing.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (self.closed) return;
        await new Promise<void>((r) => (self.wakeWriter = r));
      }
    }
    this.stream = (async () => {
      try {
        for await (const frame of this.gateway.connect(requests())) {
          this.frames.push(frame);
          for (const w of this.waiters.splice(0)) w();
        }
      } catch (err) {
        this.streamError = err as ConnectError;
      } finally {
        this.streamEnded = true;
        for (const w of this.waiters.splice(0)) w();
      }
    })();
  }

  /** Queues a frame on the stream. */
  write(frame: ConnectRequest["frame"]): void {
    this.outgoing.push(create(ConnectRequestSchema, { frame }));
    const wake = this.wakeWriter;
    this.wakeWriter = undefined;
    wake?.();
  }

  /** Sends a text message on the stream. */
  sendText(conversationId: string, clientMsgId: string, text: string): void {
    this.write({ case: "send", value: outgoingText(conversationId, clientMsgId, text) });
  }

  /** Half-closes the stream and waits for the server to end it. */
  async disconnect(): Promise<void> {
    this.closed = true;
    this.wakeWriter?.();
    await this.stream;
  }

  /** Drops the connection abruptly, like a phone losing signal. */
  async drop(): Promise<void> {
    this.sessions.abort();
    await this.stream;
  }

  /** Waits until predicate holds over the frames, or fails after timeoutMs. */
  async waitFor<T>(
    predicate: (frames: ConnectResponse[]) => T | undefined | false,
    what: string,
    timeoutMs = 10_000,
  ): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const result = predicate(this.frames);
      if (result !== undefined && result !== false) return result;
      if (this.streamEnded)
        throw new Error(
          `stream ended while waiting for ${what}: ${this.streamError?.message ?? "clean end"}`,
        );
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Waits for the stream to end; returns its error (undefined for a clean end). */
  async ended(timeoutMs = 10_000): Promise<ConnectError | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (!this.streamEnded) {
      if (Date.now() > deadline) throw new Error("stream did not end");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.streamError;
  }

  /** Every entry received on the stream, in arrival order. */
  entries(conversationId?: string) {
    return this.frames
      .flatMap((f) => (f.frame.case === "message" ? f.frame.value.entries : []))
      .filter((e) => conversationId === undefined || e.conversationId === conversationId);
  }

  /** Received message texts of a conversation, in arrival order. */
  texts(conversationId: string): string[] {
    return this.entries(conversationId).flatMap((e) =>
      e.body.case === "message" ? [new TextDecoder().decode(e.body.value.payload)] : [],
    );
  }

  /** Frames of one kind. */
  ofCase<C extends NonNullable<ConnectResponse["frame"]["case"]>>(c: C): Array<FrameValue<C>> {
    return this.frames.map((f) => f.frame).flatMap((f) => (f.case === c ? [f.value as FrameValue<C>] : []));
  }

  /** Closes everything. */
  async close(): Promise<void> {
    this.closed = true;
    this.wakeWriter?.();
    this.sessions.abort();
    await this.stream?.catch(() => {});
  }
}

/** An OutgoingEntry with a UTF-8 text payload. */
export function outgoingText(conversationId: string, clientMsgId: string, text: string): OutgoingEntry {
  return messageEntry(conversationId, clientMsgId, { payload: new TextEncoder().encode(text) });
}

/** A username unique to this test run. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * Two new users (each with one device, registered at its own URL), their direct conversation,
 * both streams open and caught up, and one text from alice that bob has received. `track` sees
 * each device as it is registered (to close them later).
 */
export async function deliveredText(
  urls: { alice: string; bob: string },
  clientMsgId: string,
  text: string,
  track: (d: TestDevice) => void,
): Promise<{ alice: TestDevice; bob: TestDevice; id: string; seq: bigint }> {
  const alice = await TestDevice.register(urls.alice, uniqueName("alice"));
  track(alice);
  const bob = await TestDevice.register(urls.bob, uniqueName("bob"));
  track(bob);
  const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
  const id = conversation!.conversationId;
  alice.connect();
  bob.connect();
  await alice.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "alice caught up");
  await bob.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "bob caught up");
  alice.sendText(id, clientMsgId, text);
  const ack = await alice.waitFor(
    () => alice.ofCase("sendAck").find((a) => a.clientMsgId === clientMsgId),
    "ack",
  );
  await bob.waitFor(() => bob.texts(id).includes(text) || undefined, "bob receives");
  return { alice, bob, id, seq: ack.seq };
}
