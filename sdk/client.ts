import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { clone, create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Device, SetPushTargetRequestSchema, User } from "../gen/switchboard/v1/accounts_pb.js";
import {
  type AttachmentPointer,
  AttachmentPointerSchema,
  ContentKind,
  type RetryRequest,
  SealedContentSchema,
} from "../gen/switchboard/v1/content_pb.js";
import type { Conversation, Member, MemberRole } from "../gen/switchboard/v1/conversations_pb.js";
import {
  type DeviceCiphertext,
  type Entry,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectRequest,
  ConnectRequestSchema,
  type ConnectResponse,
  type DeviceMismatch,
  DeviceMismatchSchema,
  ReceiptKind,
  type SendAckFrame,
  type SendErrorFrame,
  type StreamLimits,
} from "../gen/switchboard/v1/gateway_pb.js";
import { Backoff } from "./backoff.js";
import {
  ATTACHMENT_OVERHEAD,
  type AttachmentSecrets,
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
} from "./crypto/attachments.js";
import { DecryptError } from "./crypto/pairwise.js";
import {
  type ContactSafetyNumber,
  checkContext,
  contentKindOf,
  E2ee,
  KEYS_ONLY_PAYLOAD_TYPE,
  MAX_MISMATCH_RETRIES,
  PAIRWISE_PAYLOAD_TYPE,
  parseSealed,
  SENDER_KEY_PAYLOAD_TYPE,
  type SealedPart,
} from "./e2ee.js";
import { getObject, putObject } from "./media-http.js";
import { type PrivacyChoices, privacyChangesToWire, privacyFromWire } from "./privacy.js";
import { Profile } from "./profile.js";
import { ReorderBuffer } from "./reorder.js";
import {
  connectToServer,
  FrameQueue,
  isCredentialRejected,
  isNetworkFailure,
  type ServerConnection,
} from "./transport.js";
import type {
  ClientEvents,
  ClientTuning,
  DeviceCredentials,
  IncomingEntry,
  LinkOptions,
  Listener,
  OpenOptions,
  OutboxItem,
  OutgoingAttachment,
  PayloadCodec,
  RegisterOptions,
  SendResult,
} from "./types.js";

/** The default codec: payloads travel as given (until end-to-end encryption lands). */
export const identityCodec: PayloadCodec = {
  async encode(_conversationId, plaintext) {
    return plaintext;
  },
  async decode(entry) {
    switch (entry.body.case) {
      case "message":
      case "edit":
      case "reaction":
        return entry.body.value.payload;
      default:
        return new Uint8Array();
    }
  },
};

/** A new idempotency key: 22 characters of [A-Za-z0-9_-]. */
export function newClientMsgId(): string {
  return randomBytes(16).toString("base64url");
}

type OutgoingBody = NonNullable<MessageInitShape<typeof OutgoingEntrySchema>["body"]>;
/** Builds a send's body from its payload, its per-device ciphertexts and the payload's type. */
type BodyOf = (payload: Uint8Array, devicePayloads: DeviceCiphertext[], payloadType: number) => OutgoingBody;

/** Largest payload assumed before the server said (StreamLimits): the default limit. */
const DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024;
type RequestFrame = NonNullable<MessageInitShape<typeof ConnectRequestSchema>["frame"]>;

interface PendingSend {
  item: OutboxItem;
  outgoing: OutgoingEntry;
  /** sealing: the plaintext intent is (being) written to the outbox and waits to be encrypted;
   * persisting: being written to the outbox; queued: waiting for a slot; inflight: sent on the
   * current stream; waiting: retrying after the server asked us to. */
  state: "sealing" | "persisting" | "queued" | "inflight" | "waiting";
  /** An encrypted send's sealing is on the sealing chain (or on a timer after a transient failure). */
  sealScheduled?: boolean;
  retries: number;
  /** Re-encryptions after refusals for mismatched devices. */
  mismatchRetries: number;
  /** Group sends: the devices this send hands our sender key to (not kept across restarts). */
  distributed?: SealedPart["distributed"];
  timer: NodeJS.Timeout | undefined;
  promise: Promise<SendResult>;
  resolve(result: SendResult): void;
  reject(error: ConnectError): void;
}

interface ActiveStream {
  queue: FrameQueue<ConnectRequest>;
  abort: AbortController;
  ready: boolean;
  readyAtMs: number | undefined;
  /** Why the client ended the stream, when it did. */
  endReason: ConnectError | undefined;
  syncRequests: Map<number, { conversationId: string; afterSeq: bigint }>;
}

const DEFAULT_MAX_IN_FLIGHT = 64;
/** How long close() waits for the server to end the stream after the client half-closed it. */
const CLOSE_GRACE_MS = 1_000;
const FRAME_CURSOR_LIMIT = 256;
const UNARY_TIMEOUT_MS = 30_000;
/** Entries handed to the app but not yet processed before the stream reader waits for the app. */
const DELIVERY_HIGH_WATER = 2_000;

/** The payload types whose content is end-to-end encrypted (sdk/e2ee.ts). */
const ENCRYPTED_PAYLOAD_TYPES = new Set([
  PAIRWISE_PAYLOAD_TYPE,
  KEYS_ONLY_PAYLOAD_TYPE,
  SENDER_KEY_PAYLOAD_TYPE,
]);

/**
 * An entry encrypted for other devices only (sent before this one was linked): shown with its
 * decodeError, but not a failure to report.
 */
function notAddressed(err: Error): boolean {
  return err instanceof DecryptError && err.reason === "not-addressed";
}

const textEncoder = new TextEncoder();

/**
 * A Switchboard device: one profile, one stream, ordered delivery, durable sends.
 *
 * Entries reach the app through the "entry" event strictly in seq order per conversation, each
 * exactly once per profile. Sends are written to the profile's outbox before they leave and are
 * retried with the same idempotency key until the server answers, across reconnects and restarts.
 */
export class SwitchboardClient {
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private readonly tuning: Required<ClientTuning>;
  private readonly reorder: ReorderBuffer;
  private readonly backoff: Backoff;
  private readonly sends = new Map<string, PendingSend>();
  /** Encrypted sends are sealed and queued one at a time, so they leave in the order sealed. */
  private sealing: Promise<unknown> = Promise.resolve();
  /** Retry requests on their way (awaited by getHistory and close, so a command does not cut them off). */
  private readonly retrySends = new Set<Promise<void>>();
  private readonly presenceSubscriptions = new Set<string>();
  private readonly ackDue = new Set<string>();
  private readonly readDue = new Map<string, bigint>();
  private ackEntries = 0;
  private ackTimer: NodeJS.Timeout | undefined;
  private flushingAcks: Promise<void> | undefined;
  private deliveryChain: Promise<void> = Promise.resolve();
  private deliveryBacklog = 0;
  private stream: ActiveStream | undefined;
  private loop: Promise<void> | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private fatal: ConnectError | undefined;
  private limits: StreamLimits | undefined;
  private nextRequestId = 1;
  private wakeSleep: (() => void) | undefined;
  private firstReady:
    | { promise: Promise<void>; resolve(): void; reject(err: ConnectError): void }
    | undefined;

  private constructor(
    private readonly profile: Profile,
    private readonly conn: ServerConnection,
    private readonly codec: PayloadCodec,
    tuning: ClientTuning,
    private readonly e2ee: E2ee | undefined = undefined,
    /** OpenOptions.acceptUnencrypted. */
    private readonly acceptUnencrypted = false,
  ) {
    this.tuning = {
      backoffBaseMs: tuning.backoffBaseMs ?? 250,
      backoffCapMs: tuning.backoffCapMs ?? 30_000,
      stableAfterMs: tuning.stableAfterMs ?? 10_000,
      pingIntervalMs: tuning.pingIntervalMs ?? 20_000,
      deadAfterMs: tuning.deadAfterMs ?? 45_000,
      gapTimeoutMs: tuning.gapTimeoutMs ?? 500,
      syncPageSize: tuning.syncPageSize ?? 256,
      ackDelayMs: tuning.ackDelayMs ?? 50,
      ackEveryEntries: tuning.ackEveryEntries ?? 100,
    };
    this.backoff = new Backoff(this.tuning.backoffBaseMs, this.tuning.backoffCapMs);
    this.reorder = new ReorderBuffer(
      profile.cursors().map(([id, c]) => [id, c.delivered] as const),
      {
        gapTimeoutMs: this.tuning.gapTimeoutMs,
        pageSize: this.tuning.syncPageSize,
        requestSync: (conversationId, afterSeq, limit) => this.requestSync(conversationId, afterSeq, limit),
        // The server resends what it thinks we lack; telling it our cursor again stops that.
        onDuplicate: (conversationId) => this.scheduleAck(conversationId, 0),
      },
    );
    for (const item of profile.outbox()) this.restoreSend(item);
  }

  // ---------------------------------------------------------------------------------------------
  // Creating and opening profiles

  /** Opens an existing profile. Call connect() to start the stream. */
  static async open(options: OpenOptions): Promise<SwitchboardClient> {
    const profile = await Profile.open(options.profileDir);
    const serverUrl = options.serverUrl ?? profile.credentials.serverUrl;
    const conn = connectToServer({
      serverUrl,
      credential: { deviceId: profile.credentials.deviceId, deviceSecret: profile.credentials.deviceSecret },
      unaryTimeoutMs: UNARY_TIMEOUT_MS,
      ...(options.alternateUrls !== undefined && { alternateUrls: options.alternateUrls }),
    });
    let client: SwitchboardClient | undefined;
    // A profile made with encryption stays encrypted unless the app says otherwise: one that lost
    // its Signal state must not fall back to plaintext silently.
    const encryption = options.encryption ?? profile.credentials.encrypted === true;
    const e2ee = encryption
      ? await E2ee.open(
          profile.dir,
          { userId: profile.credentials.userId, deviceId: profile.credentials.deviceId },
          conn,
          (event) => client?.emit("identityChanged", event),
          options.signedPrekeyMaxAgeMs,
        )
      : undefined;
    client = new SwitchboardClient(
      profile,
      conn,
      options.codec ?? identityCodec,
      options,
      e2ee,
      options.acceptUnencrypted === true,
    );
    if (e2ee !== undefined) e2ee.onDevicesChanged = (event) => client?.emit("devicesChanged", event);
    return client;
  }

  /** True when direct conversations are end-to-end encrypted (OpenOptions.encryption). */
  get encrypted(): boolean {
    return this.e2ee !== undefined;
  }

  /** Registers a new user with this device as its first, writes a new profile and opens it. */
  static async register(options: RegisterOptions): Promise<SwitchboardClient> {
    await SwitchboardClient.refuseExistingProfile(options.profileDir);
    const conn = connectToServer({ serverUrl: options.serverUrl });
    let credentials: DeviceCredentials;
    try {
      const res = await conn.accounts.register(
        {
          username: options.username,
          displayName: options.displayName ?? "",
          deviceName: options.deviceName ?? hostname(),
          inviteToken: options.inviteToken ?? "",
        },
        { timeoutMs: UNARY_TIMEOUT_MS },
      );
      credentials = credentialsFrom(options.serverUrl, res.user, res.credential);
    } finally {
      conn.close();
    }
    await Profile.create(options.profileDir, { ...credentials, encrypted: options.encryption === true });
    return SwitchboardClient.openPublished(options);
  }

  /** Joins an existing user with a link code from another device; writes a new profile. */
  static async link(options: LinkOptions): Promise<SwitchboardClient> {
    await SwitchboardClient.refuseExistingProfile(options.profileDir);
    const conn = connectToServer({ serverUrl: options.serverUrl });
    let credentials: DeviceCredentials;
    try {
      const res = await conn.accounts.linkDevice(
        { code: options.code, deviceName: options.deviceName ?? hostname() },
        { timeoutMs: UNARY_TIMEOUT_MS },
      );
      credentials = credentialsFrom(options.serverUrl, res.user, res.credential);
    } finally {
      conn.close();
    }
    await Profile.create(options.profileDir, { ...credentials, encrypted: options.encryption === true });
    return SwitchboardClient.openPublished(options);
  }

  /**
   * Opens a new profile and, with encryption, puts the device's keys in the directory at once:
   * nobody can encrypt to a device before, and an app may well send before it connects. If that
   * fails the profile stands and connect() uploads them.
   */
  private static async openPublished(options: OpenOptions): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.open(options);
    if (client.e2ee !== undefined) {
      try {
        await client.e2ee.ensureKeys();
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  private static async refuseExistingProfile(dir: string): Promise<void> {
    // Checked before the server creates anything, so a typo does not leave an orphan account.
    if (await Profile.exists(dir)) {
      throw new Error(`a profile already exists in ${dir}; use another --profile directory`);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Identity

  /** This user's id. */
  get userId(): string {
    return this.profile.credentials.userId;
  }

  /** This user's handle. */
  get username(): string {
    return this.profile.credentials.username;
  }

  /** This device's id. */
  get deviceId(): string {
    return this.profile.credentials.deviceId;
  }

  /** The profile directory. */
  get profileDir(): string {
    return this.profile.dir;
  }

  /** True while a stream is up (after ready). */
  get connected(): boolean {
    return this.stream?.ready === true;
  }

  /** The local cursors of a conversation (delivered to the app, read). */
  localCursor(conversationId: string): { delivered: bigint; read: bigint } | undefined {
    return this.profile.cursor(conversationId);
  }

  /** Sends not yet answered by the server (persisted in the outbox). */
  pendingSends(): Array<{ clientMsgId: string; conversationId: string }> {
    return [...this.sends.values()].map((p) => ({
      clientMsgId: p.item.clientMsgId,
      conversationId: p.item.conversationId,
    }));
  }

  // ---------------------------------------------------------------------------------------------
  // Events

  /** Adds a listener. */
  on<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): this {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return this;
  }

  /** Removes a listener. */
  off<K extends keyof ClientEvents>(event: K, listener: Listener<ClientEvents[K]>): this {
    this.listeners.get(event)?.delete(listener as Listener<never>);
    return this;
  }

  /** Resolves with the next event of a kind that matches the predicate. */
  waitFor<K extends keyof ClientEvents>(
    event: K,
    predicate: (value: ClientEvents[K]) => boolean = () => true,
  ): Promise<ClientEvents[K]> {
    return new Promise((resolve) => {
      const listener: Listener<ClientEvents[K]> = (value) => {
        if (!predicate(value)) return;
        this.off(event, listener);
        resolve(value);
      };
      this.on(event, listener);
    });
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        const result = (listener as Listener<ClientEvents[K]>)(value);
        if (result instanceof Promise) result.catch((err: unknown) => this.listenerFailed(event, err));
      } catch (err) {
        this.listenerFailed(event, err);
      }
    }
  }

  private async emitAndWait<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): Promise<void> {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        await (listener as Listener<ClientEvents[K]>)(value);
      } catch (err) {
        this.listenerFailed(event, err);
      }
    }
  }

  private listenerFailed(event: keyof ClientEvents, err: unknown): void {
    if (event === "error") return;
    this.emit("error", { error: ConnectError.from(err, Code.Internal), fatal: false });
  }

  // ---------------------------------------------------------------------------------------------
  // Stream lifecycle

  /**
   * Starts the stream (and keeps it up, reconnecting with backoff). Resolves when the server has
   * accepted it for the first time; rejects if the client stops for good first (e.g. revoked).
   * Takes the profile's lock: one streaming process per profile.
   */
  async connect(): Promise<void> {
    if (this.fatal !== undefined) throw this.fatal;
    if (this.closed) throw new ConnectError("client is closed", Code.Canceled);
    if (this.firstReady === undefined) {
      let resolve!: () => void;
      let reject!: (err: ConnectError) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      promise.catch(() => {});
      this.firstReady = { promise, resolve, reject };
      await this.profile.lock();
      this.loop = this.runLoop();
      // Intents written before a crash, never encrypted: encrypted now, in their order.
      for (const p of this.sends.values()) if (p.state === "sealing") this.scheduleSeal(p);
    }
    await this.firstReady.promise;
    // With encryption, others can reach this device only once its keys are in the directory.
    if (this.e2ee !== undefined) await this.e2ee.ensureKeys();
  }

  /**
   * Drops the current stream and connects again at once (for example after the network
   * changed). Nothing is lost: unanswered sends are resent and the server resends unacked entries.
   */
  reconnect(): void {
    this.backoff.reset();
    const s = this.stream;
    if (s !== undefined) this.endStream(s, new ConnectError("reconnect requested", Code.Unavailable));
    this.wakeSleep?.();
  }

  /**
   * Stops the client: hands nothing more to the app, acknowledges what it handled, closes the
   * stream and the connection, and releases the profile. Unanswered sends stay in the outbox (they
   * go out on the next connect); their promises reject with Code.Canceled.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    this.wakeSleep?.();
    await this.deliveryChain;
    await Promise.allSettled([...this.retrySends]);
    await this.flushAcks().catch(() => {});
    const s = this.stream;
    if (s !== undefined) {
      // Half-close first so the last acks reach the server; abort if it does not end the stream.
      s.endReason ??= new ConnectError("client closed", Code.Canceled);
      s.queue.end();
      const ended = await Promise.race([
        this.loop?.then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), CLOSE_GRACE_MS).unref()),
      ]);
      if (ended !== true) this.endStream(s, s.endReason);
    }
    await this.loop;
    await this.profile.settled();
    this.reorder.pause();
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer);
    const canceled = new ConnectError("client closed before the server answered", Code.Canceled);
    this.abandonSends(canceled);
    this.firstReady?.reject(canceled);
    this.conn.close();
    await this.profile.flushCursors().catch(() => {});
    await this.profile.unlock();
  }

  private async runLoop(): Promise<void> {
    let unauthenticatedInARow = 0;
    while (!this.closed) {
      const s: ActiveStream = {
        queue: new FrameQueue(),
        abort: new AbortController(),
        ready: false,
        readyAtMs: undefined,
        endReason: undefined,
        syncRequests: new Map(),
      };
      this.stream = s;
      let error: ConnectError | undefined;
      try {
        await this.runStream(s);
        error = s.endReason ?? new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (err) {
        error = s.endReason ?? ConnectError.from(err);
      }
      this.streamEnded(s);
      if (this.closed) {
        this.emit("disconnected", { error: undefined, retryInMs: undefined });
        break;
      }
      // Only refusals with no accepted stream in between count as "the device is refused".
      if (s.ready) unauthenticatedInARow = 0;
      const fatal = this.isFatal(error, unauthenticatedInARow);
      if (fatal !== undefined) {
        this.stop(fatal);
        break;
      }
      let delay: number;
      if (error.code === Code.Unauthenticated) {
        unauthenticatedInARow += 1;
        // The token may simply have expired: get a new one and try again right away.
        this.conn.tokens?.invalidate();
        delay = 0;
      } else {
        const stable = s.readyAtMs !== undefined && Date.now() - s.readyAtMs >= this.tuning.stableAfterMs;
        if (stable) this.backoff.reset();
        delay = this.backoff.next();
      }
      this.emit("disconnected", { error, retryInMs: delay });
      await this.sleep(delay);
    }
  }

  private isFatal(error: ConnectError, unauthenticatedInARow: number): ConnectError | undefined {
    if (isCredentialRejected(error)) return error;
    // Another process streams as this device and the server closed our (older) stream for it;
    // reconnecting would only push that one out in turn, back and forth. A connection reset also
    // arrives as ABORTED (from connect-node, when a gateway dies); that one calls for a reconnect.
    if (error.code === Code.Aborted && !isNetworkFailure(error)) {
      return new ConnectError(
        `this device opened a newer stream elsewhere: ${error.rawMessage}`,
        Code.Aborted,
        undefined,
        undefined,
        error,
      );
    }
    // A second refusal right after a fresh token: the device itself is no longer accepted.
    if (error.code === Code.Unauthenticated && unauthenticatedInARow >= 1) return error;
    return undefined;
  }

  /** Settles every unanswered send's promise; the sends stay in the outbox for the next run. */
  private abandonSends(error: ConnectError): void {
    for (const p of this.sends.values()) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(error);
    }
    this.sends.clear();
  }

  private stop(error: ConnectError): void {
    this.fatal = error;
    this.closed = true;
    this.abandonSends(error);
    this.emit("disconnected", { error, retryInMs: undefined });
    this.emit("error", { error, fatal: true });
    this.firstReady?.reject(error);
    this.conn.close();
    void this.profile.unlock();
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wakeSleep = () => {
        this.wakeSleep = undefined;
        done();
      };
    });
  }

  private async runStream(s: ActiveStream): Promise<void> {
    let lastFrameAtMs = Date.now();
    let lastPingAtMs = Date.now();
    let nonce = 0n;
    const tick = Math.max(10, Math.min(1_000, this.tuning.pingIntervalMs / 2, this.tuning.deadAfterMs / 4));
    const watchdog = setInterval(() => {
      const now = Date.now();
      if (now - lastFrameAtMs >= this.tuning.deadAfterMs) {
        this.endStream(
          s,
          new ConnectError("no frame from the server in time; stream presumed dead", Code.Unavailable),
        );
        return;
      }
      if (s.ready && now - lastPingAtMs >= this.tuning.pingIntervalMs) {
        lastPingAtMs = now;
        nonce += 1n;
        this.push(s, { case: "ping", value: { nonce } });
      }
    }, tick);
    try {
      const responses = this.conn.gateway.connect(s.queue, { signal: s.abort.signal, timeoutMs: 0 });
      for await (const frame of responses) {
        lastFrameAtMs = Date.now();
        this.handleFrame(s, frame);
        // Back-pressure: a slow app slows the stream rather than growing memory.
        if (this.deliveryBacklog > DELIVERY_HIGH_WATER) await this.deliveryChain;
      }
    } finally {
      clearInterval(watchdog);
      s.queue.end();
    }
  }

  private endStream(s: ActiveStream, reason: ConnectError): void {
    s.endReason ??= reason;
    s.queue.end();
    s.abort.abort(reason);
  }

  private streamEnded(s: ActiveStream): void {
    if (this.stream === s) this.stream = undefined;
    s.ready = false;
    this.reorder.pause();
    for (const p of this.sends.values()) if (p.state === "inflight") p.state = "queued";
  }

  private push(s: ActiveStream, frame: RequestFrame): void {
    s.queue.push(create(ConnectRequestSchema, { frame }));
  }

  // ---------------------------------------------------------------------------------------------
  // Frames from the server

  private handleFrame(s: ActiveStream, res: ConnectResponse): void {
    const frame = res.frame;
    switch (frame.case) {
      case "ready": {
        s.ready = true;
        s.readyAtMs = Date.now();
        this.limits = frame.value.limits;
        const limits = frame.value.limits;
        this.emit("connected", {
          sessionId: frame.value.sessionId,
          limits: {
            maxPayloadBytes: limits?.maxPayloadBytes ?? 0,
            maxSendsInFlight: limits?.maxSendsInFlight ?? 0,
            sendsPerSecond: limits?.sendsPerSecond ?? 0,
            sendBurst: limits?.sendBurst ?? 0,
          },
        });
        this.firstReady?.resolve();
        if (this.presenceSubscriptions.size > 0) {
          this.push(s, {
            case: "presenceSubscribe",
            value: { subscribeUserIds: [...this.presenceSubscriptions] },
          });
        }
        void this.flushAcks().catch(() => {});
        this.pump();
        // Uploads the first keys, or tops up one-time prekeys (a prekeys_low notice is sent only
        // to devices online at that moment).
        this.e2ee?.ensureKeys().catch((err: unknown) => this.keysFailed(err));
        return;
      }
      case "prekeysLow":
        this.e2ee
          ?.replenish({
            oneTimeEcPrekeys: frame.value.oneTimeEcRemaining,
            oneTimeKyberPrekeys: frame.value.oneTimeKyberRemaining,
          })
          .catch((err: unknown) => this.keysFailed(err));
        return;
      case "message":
        if (this.closed) return;
        this.deliver(this.reorder.offer(frame.value.entries));
        return;
      case "syncPage": {
        const request = s.syncRequests.get(frame.value.requestId);
        if (request === undefined || this.closed) return;
        s.syncRequests.delete(frame.value.requestId);
        this.deliver(
          this.reorder.answer({
            conversationId: request.conversationId,
            afterSeq: request.afterSeq,
            entries: frame.value.entries,
            lastSeq: frame.value.lastSeq,
            hasMore: frame.value.hasMore,
            errorCode: frame.value.errorCode,
          }),
        );
        if (frame.value.errorCode !== 0) {
          this.emit("error", {
            error: new ConnectError(
              `sync of ${request.conversationId}: ${frame.value.errorMessage}`,
              frame.value.errorCode,
            ),
            fatal: false,
          });
        }
        return;
      }
      case "caughtUp": {
        const entries = frame.value.entries;
        // After the app has seen the backlog, so "caughtUp" means what it says.
        this.deliveryChain = this.deliveryChain.then(() => {
          this.reorder.resume();
          this.emit("caughtUp", { entries });
        });
        return;
      }
      case "sendAck":
        this.sendAcked(frame.value);
        return;
      case "sendError":
        this.sendRefused(frame.value);
        return;
      case "receipt": {
        const r = frame.value;
        if (r.kind !== ReceiptKind.DELIVERED && r.kind !== ReceiptKind.READ) return;
        this.emit("receipt", {
          conversationId: r.conversationId,
          userId: r.userId,
          kind: r.kind === ReceiptKind.READ ? "read" : "delivered",
          upToSeq: r.upToSeq,
          timeMs: r.timeMs,
          rawKind: r.kind,
        });
        return;
      }
      case "typing":
        // The server relays a device's own indicator back to it; that is never news.
        if (frame.value.deviceId === this.deviceId) return;
        this.emit("typing", {
          conversationId: frame.value.conversationId,
          userId: frame.value.userId,
          deviceId: frame.value.deviceId,
          active: frame.value.active,
        });
        return;
      case "presence":
        this.emit("presence", {
          userId: frame.value.userId,
          online: frame.value.online,
          lastSeenMs: frame.value.lastSeenMs,
        });
        return;
      case "error":
        this.emit("error", {
          error: new ConnectError(
            `server refused a ${frame.value.frame} frame: ${frame.value.message}`,
            frame.value.code,
          ),
          fatal: false,
        });
        return;
      case "pong":
      case undefined:
        return;
    }
  }

  private keysFailed(err: unknown): void {
    if (this.closed) return;
    this.emit("error", { error: ConnectError.from(err, Code.Internal), fatal: false });
  }

  private requestSync(conversationId: string, afterSeq: bigint, limit: number): void {
    const s = this.stream;
    if (s === undefined || !s.ready) return;
    const requestId = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffffffff ? 1 : this.nextRequestId + 1;
    s.syncRequests.set(requestId, { conversationId, afterSeq });
    this.push(s, { case: "syncRequest", value: { requestId, conversationId, afterSeq, limit } });
  }

  // ---------------------------------------------------------------------------------------------
  // Handing entries to the app, acknowledging them

  private deliver(entries: Entry[]): void {
    if (entries.length === 0) return;
    this.deliveryBacklog += entries.length;
    this.deliveryChain = this.deliveryChain.then(async () => {
      for (const raw of entries) {
        this.deliveryBacklog -= 1;
        const entry = await this.toIncoming(raw);
        if (this.e2ee !== undefined && entry.decodeError !== undefined && !notAddressed(entry.decodeError)) {
          // Never a crash, never a stuck stream: the app hears of it, and the entry is acked.
          this.emit("decryptFailed", {
            conversationId: raw.conversationId,
            seq: raw.seq,
            senderUserId: raw.senderUserId,
            senderDeviceId: raw.senderDeviceId,
            error: entry.decodeError,
          });
        }
        // A keys-only entry carried sender keys and nothing for the app.
        if (!entry.keysOnly) await this.emitAndWait("entry", entry);
        this.profile.setDelivered(raw.conversationId, raw.seq);
        this.scheduleAck(raw.conversationId, 1);
      }
    });
  }

  /** Turns a log entry into what the app sees, decoding its payload. */
  async toIncoming(raw: Entry): Promise<IncomingEntry> {
    const body = raw.body;
    let payload: Uint8Array | undefined;
    let decodeError: Error | undefined;
    let targetSeq: bigint | undefined;
    const hasPayload = body.case === "message" || body.case === "edit" || body.case === "reaction";
    if (body.case === "edit" || body.case === "delete" || body.case === "reaction")
      targetSeq = body.value.targetSeq;
    let attachments: AttachmentPointer[] = [];
    let keysOnly = false;
    let encryptedContent = false;
    if (body.case === "membership" && this.e2ee !== undefined) {
      try {
        await this.e2ee.membershipChanged(raw);
      } catch (err) {
        this.emit("error", { error: ConnectError.from(err, Code.Internal), fatal: false });
      }
    }
    if (hasPayload && !raw.redacted) {
      try {
        const ownEncrypted =
          this.e2ee !== undefined &&
          raw.senderDeviceId === this.deviceId &&
          body.value.payload.length === 0 &&
          this.e2ee.hasSent(raw.clientMsgId);
        const encrypted =
          body.value.devicePayloads.length > 0 || ENCRYPTED_PAYLOAD_TYPES.has(body.value.payloadType);
        if (this.e2ee !== undefined && (encrypted || ownEncrypted)) {
          const fresh = !this.e2ee.hasDecoded(raw);
          // Written to the profile before this resolves, so before the entry is acked.
          const content = parseSealed(await this.e2ee.decode(raw));
          // A keys-only part is a plain marker: it carries nothing to bind.
          if (!content.keysOnly) checkContext(content, raw);
          payload = content.payload;
          attachments = content.attachments;
          keysOnly = content.keysOnly;
          encryptedContent = true;
          if (content.retryRequest !== undefined) {
            // A control message: nothing for the app.
            keysOnly = true;
            payload = undefined;
            if (fresh && raw.senderDeviceId !== this.deviceId)
              await this.retryRequested(raw, content.retryRequest);
          }
        } else if (encrypted) {
          throw new Error("the entry is end-to-end encrypted and this client was opened without encryption");
        } else if (
          this.e2ee !== undefined &&
          !this.acceptUnencrypted &&
          body.value.payload.length > 0 &&
          // An encrypted device sends nothing in plaintext (but empty reactions): plaintext under
          // its own name is a server's (or from before the profile turned encryption on).
          (raw.senderDeviceId === this.deviceId || this.e2ee.encryptsWith(raw.senderUserId))
        ) {
          // A peer who encrypts does not send plaintext; a server that strips the encryption
          // (payload_type rewritten to 0, device payloads dropped) must not get it shown.
          throw new DecryptError(
            { userId: raw.senderUserId, deviceId: raw.senderDeviceId },
            "unencrypted",
            "the entry is not end-to-end encrypted, but this device has encrypted with its sender " +
              "before (the server may have stripped the encryption); refused (acceptUnencrypted shows it)",
          );
        } else {
          payload = await this.codec.decode(raw);
        }
      } catch (err) {
        decodeError = err instanceof Error ? err : new Error(String(err));
        const retry = this.e2ee?.retryFor(raw, decodeError);
        if (retry !== undefined) this.sendRetryRequest(raw.senderUserId, retry);
      }
    }
    return {
      conversationId: raw.conversationId,
      seq: raw.seq,
      senderUserId: raw.senderUserId,
      senderDeviceId: raw.senderDeviceId,
      clientMsgId: raw.clientMsgId,
      serverTimeMs: raw.serverTimeMs,
      kind: body.case ?? "unknown",
      payload,
      attachments,
      keysOnly,
      encrypted: encryptedContent,
      targetSeq,
      membership: body.case === "membership" ? body.value : undefined,
      redacted: raw.redacted,
      decodeError,
      fromThisDevice: raw.senderDeviceId !== "" && raw.senderDeviceId === this.deviceId,
      raw,
    };
  }

  /**
   * Asks a sending device to hand its sender key of a group over again (a retry request in the
   * direct conversation with its user, pairwise encrypted, never shown to apps). In the
   * background: getHistory and close wait for it.
   */
  private sendRetryRequest(peerUserId: string, request: RetryRequest): void {
    const run = async (): Promise<void> => {
      const { conversationId } = await this.openDirect(peerUserId);
      const content = toBinary(
        SealedContentSchema,
        create(SealedContentSchema, { conversationId, kind: ContentKind.CONTROL, retryRequest: request }),
      );
      await this.sendContentUnary(conversationId, content, newClientMsgId(), 3);
    };
    const sending: Promise<void> = run()
      .catch((err: unknown) => {
        if (!this.closed) this.emit("error", { error: ConnectError.from(err, Code.Internal), fatal: false });
      })
      .finally(() => this.retrySends.delete(sending));
    this.retrySends.add(sending);
  }

  /**
   * A device asked this one for its sender key of a group again: it is marked as lacking it, and
   * with a stream up the key goes out at once in a keys-only send (otherwise with the next send).
   */
  private async retryRequested(raw: Entry, request: RetryRequest): Promise<void> {
    const e2ee = this.requireE2ee();
    try {
      const requester = { userId: raw.senderUserId, deviceId: raw.senderDeviceId };
      if (!(await e2ee.retryRequested(requester, request))) return;
      if (!this.connected) return;
      const run = async (): Promise<void> => {
        const max = this.limits?.maxPayloadBytes || DEFAULT_MAX_PAYLOAD_BYTES;
        for (const part of await e2ee.sealKeysOnly(request.conversationId, max)) {
          const partId = newClientMsgId();
          await e2ee.rememberSent(partId, part.content);
          const sent = this.enqueueSend(
            request.conversationId,
            messageBody(part.payload, part.devicePayloads, part.payloadType),
            partId,
            part.content,
          );
          const pending = this.sends.get(partId);
          if (pending !== undefined) pending.distributed = part.distributed;
          sent.catch(() => {});
        }
      };
      const next = this.sealing.then(run, run);
      this.sealing = next.catch(() => {});
      next.catch((err: unknown) => this.keysFailed(err));
    } catch (err) {
      this.keysFailed(err);
    }
  }

  private scheduleAck(conversationId: string, entries: number): void {
    this.ackDue.add(conversationId);
    this.ackEntries += entries;
    if (this.ackEntries >= this.tuning.ackEveryEntries) {
      void this.flushAcks().catch(() => {});
      return;
    }
    this.ackTimer ??= setTimeout(() => {
      this.ackTimer = undefined;
      void this.flushAcks().catch(() => {});
    }, this.tuning.ackDelayMs);
  }

  /**
   * Sends the delivered and read cursors that are due. The cursors are made durable first: the
   * server must never believe the device has entries the device would forget in a crash.
   */
  private flushAcks(): Promise<void> {
    if (this.flushingAcks !== undefined) {
      // One flush at a time keeps the frames in cursor order; run again after it.
      return this.flushingAcks.then(() => this.flushAcks());
    }
    this.flushingAcks = this.flushAcksNow().finally(() => {
      this.flushingAcks = undefined;
    });
    return this.flushingAcks;
  }

  private async flushAcksNow(): Promise<void> {
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    const s = this.stream;
    if (s === undefined || !s.ready || (this.ackDue.size === 0 && this.readDue.size === 0)) return;
    const acks = [...this.ackDue];
    const reads = [...this.readDue];
    this.ackDue.clear();
    this.readDue.clear();
    this.ackEntries = 0;
    try {
      await this.profile.flushCursors();
    } catch (err) {
      for (const id of acks) this.ackDue.add(id);
      for (const [id, seq] of reads) if (!this.readDue.has(id)) this.readDue.set(id, seq);
      this.emit("error", { error: ConnectError.from(err, Code.Internal), fatal: false });
      this.scheduleAck(acks[0] ?? reads[0]?.[0] ?? "", 0);
      return;
    }
    if (this.stream !== s || !s.ready) {
      // The stream went away meanwhile; the next one gets these.
      for (const id of acks) this.ackDue.add(id);
      for (const [id, seq] of reads) if (!this.readDue.has(id)) this.readDue.set(id, seq);
      return;
    }
    const ackCursors = acks.flatMap((conversationId) => {
      const c = this.profile.cursor(conversationId);
      return c === undefined || c.delivered === 0n ? [] : [{ conversationId, seq: c.delivered }];
    });
    for (let i = 0; i < ackCursors.length; i += FRAME_CURSOR_LIMIT) {
      this.push(s, { case: "ack", value: { cursors: ackCursors.slice(i, i + FRAME_CURSOR_LIMIT) } });
    }
    const readCursors = reads.map(([conversationId, seq]) => ({ conversationId, seq }));
    for (let i = 0; i < readCursors.length; i += FRAME_CURSOR_LIMIT) {
      this.push(s, { case: "read", value: { cursors: readCursors.slice(i, i + FRAME_CURSOR_LIMIT) } });
    }
  }

  /** Marks a conversation read up to a seq (cumulative); members see a read receipt. */
  markRead(conversationId: string, seq: bigint | number): void {
    const upTo = BigInt(seq);
    const before = this.profile.cursor(conversationId)?.read ?? 0n;
    if (upTo <= before) return;
    this.profile.setRead(conversationId, upTo);
    const due = this.readDue.get(conversationId);
    if (due === undefined || upTo > due) this.readDue.set(conversationId, upTo);
    this.scheduleAck(conversationId, 0);
  }

  // ---------------------------------------------------------------------------------------------
  // Sending

  /** Sends a message; resolves when the server has stored it durably (one tick). */
  send(
    conversationId: string,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.sendWithPayload(conversationId, payload, options.clientMsgId, messageBody);
  }

  /** Replaces the payload of one of this user's earlier messages. */
  edit(
    conversationId: string,
    targetSeq: bigint | number,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.sendWithPayload(
      conversationId,
      payload,
      options.clientMsgId,
      (p, devicePayloads, payloadType) => ({
        case: "edit",
        value: { targetSeq: BigInt(targetSeq), payload: p, devicePayloads, payloadType },
      }),
    );
  }

  /** Reacts to a message; an empty payload removes this user's reaction. */
  react(
    conversationId: string,
    targetSeq: bigint | number,
    payload: Uint8Array | string,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.sendWithPayload(
      conversationId,
      payload,
      options.clientMsgId,
      (p, devicePayloads, payloadType) => ({
        case: "reaction",
        value: { targetSeq: BigInt(targetSeq), payload: p, devicePayloads, payloadType },
      }),
    );
  }

  /** Deletes a message for everyone. */
  deleteForEveryone(
    conversationId: string,
    targetSeq: bigint | number,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.enqueueSend(
      conversationId,
      { case: "delete", value: { targetSeq: BigInt(targetSeq) } },
      options.clientMsgId,
    );
  }

  private async sendWithPayload(
    conversationId: string,
    payload: Uint8Array | string,
    clientMsgId: string | undefined,
    body: BodyOf,
  ): Promise<SendResult> {
    const plaintext = typeof payload === "string" ? textEncoder.encode(payload) : payload;
    // An empty reaction removes one: it carries nothing to encrypt.
    if (this.e2ee !== undefined && plaintext.byteLength > 0) {
      const template = body(new Uint8Array(), [], 0);
      return this.sendSealed(
        conversationId,
        sealedContent(conversationId, template, plaintext, []),
        clientMsgId,
        body,
      );
    }
    const encoded = await this.codec.encode(conversationId, plaintext);
    const max = this.limits?.maxPayloadBytes ?? 0;
    if (max > 0 && encoded.byteLength > max) {
      throw new ConnectError(
        `payload of ${encoded.byteLength} bytes exceeds the server's limit of ${max}`,
        Code.InvalidArgument,
      );
    }
    return this.enqueueSend(conversationId, body(encoded, [], 0), clientMsgId);
  }

  /**
   * Queues an encrypted send: the plaintext intent is written to the outbox first (durable before
   * anything is encrypted, so a crash loses nothing the app handed over), then the content is
   * encrypted for the conversation on the sealing chain, one send at a time, and the ciphertexts
   * replace the intent in the outbox (after any keys-only parts a group's key distribution
   * needs). Sends leave in the order their sender keys advanced.
   */
  private async sendSealed(
    conversationId: string,
    content: Uint8Array,
    clientMsgId: string | undefined,
    body: BodyOf,
  ): Promise<SendResult> {
    this.requireE2ee();
    if (this.closed) throw this.fatal ?? new ConnectError("client is closed", Code.Canceled);
    const id = clientMsgId ?? newClientMsgId();
    const existing = this.sends.get(id);
    if (existing !== undefined) return existing.promise;
    const outgoing = create(OutgoingEntrySchema, {
      clientMsgId: id,
      conversationId,
      body: body(new Uint8Array(), [], 0),
    });
    const item: OutboxItem = {
      clientMsgId: id,
      conversationId,
      outgoing: outboxEncoding(outgoing),
      createdAtMs: Date.now(),
      plaintext: Buffer.from(content).toString("base64"),
      sealed: false,
    };
    const pending = await this.addSend(item, outgoing, "sealing");
    this.scheduleSeal(pending);
    return pending.promise;
  }

  /** Encrypts a send whose intent is in the outbox, on the sealing chain (see sendSealed). */
  private scheduleSeal(p: PendingSend): void {
    if (p.sealScheduled === true) return;
    p.sealScheduled = true;
    const e2ee = this.requireE2ee();
    const id = p.item.clientMsgId;
    const run = async (): Promise<void> => {
      if (this.sends.get(id) !== p) return;
      try {
        const content = Buffer.from(p.item.plaintext ?? "", "base64");
        // Kept first: this device's own entry comes back without a ciphertext for it.
        await e2ee.rememberSent(id, content);
        const parts = await this.seal(p.item.conversationId, content, !this.connected);
        for (const part of parts) {
          if (part.keysOnly) {
            const partId = newClientMsgId();
            await e2ee.rememberSent(partId, part.content);
            // enqueueSend registers the send before its first await: the order is kept.
            const sent = this.enqueueSend(
              p.item.conversationId,
              messageBody(part.payload, part.devicePayloads, part.payloadType),
              partId,
              part.content,
            );
            const keys = this.sends.get(partId);
            if (keys !== undefined) keys.distributed = part.distributed;
            sent.catch(() => {});
            continue;
          }
          const outgoing = withCiphertexts(p.outgoing, part);
          const { sealed: _intent, ...rest } = p.item;
          const item: OutboxItem = {
            ...rest,
            outgoing: outboxEncoding(outgoing),
          };
          if (this.sends.get(id) !== p) return;
          // Behind the keys-only parts just queued, and behind every send sealed before it.
          this.sends.delete(id);
          this.sends.set(id, p);
          p.state = "persisting";
          await this.profile.addToOutbox(item);
          p.outgoing = outgoing;
          p.item = item;
          p.distributed = part.distributed;
          if (p.state === "persisting") p.state = "queued";
        }
        this.pump();
      } catch (err) {
        if (this.closed || this.sends.get(id) !== p) return; // the intent stays in the outbox
        const error = ConnectError.from(err, Code.FailedPrecondition);
        if (error.code === Code.Unavailable || error.code === Code.DeadlineExceeded) {
          // The server is away: try again later; the intent stays in the outbox meanwhile.
          p.state = "sealing";
          p.sealScheduled = false;
          p.retries += 1;
          p.timer = setTimeout(
            () => {
              p.timer = undefined;
              if (this.sends.get(id) === p) this.scheduleSeal(p);
            },
            Math.min(30_000, 250 * 2 ** Math.min(p.retries, 7)),
          );
          return;
        }
        this.failSend(p, error);
      }
    };
    const next = this.sealing.then(run, run);
    this.sealing = next.catch(() => {});
  }

  private requireE2ee(): E2ee {
    if (this.e2ee === undefined) {
      throw new ConnectError(
        "end-to-end encryption is off: open the client with encryption: true",
        Code.FailedPrecondition,
      );
    }
    return this.e2ee;
  }

  /**
   * Seals a content, refusing what no device can read or what exceeds the limit. `freshMembers`:
   * a group's member list is read again first (no stream brings the membership entries).
   */
  private async seal(
    conversationId: string,
    content: Uint8Array,
    freshMembers = false,
  ): Promise<SealedPart[]> {
    const e2ee = this.requireE2ee();
    const max = this.limits?.maxPayloadBytes || DEFAULT_MAX_PAYLOAD_BYTES;
    let parts: SealedPart[];
    try {
      parts = await e2ee.seal(conversationId, content, max, { freshMembers });
    } catch (err) {
      throw ConnectError.from(err, Code.FailedPrecondition);
    }
    for (const part of parts) {
      if (part.payloadType === PAIRWISE_PAYLOAD_TYPE && part.devicePayloads.length === 0) {
        // A direct message for no device at all: nobody can be reached yet.
        throw new ConnectError(
          "no device of the conversation has keys in the key directory yet; nothing can be encrypted",
          Code.FailedPrecondition,
        );
      }
      const total =
        part.payload.byteLength + part.devicePayloads.reduce((n, c) => n + c.ciphertext.byteLength, 0);
      if (total > max) {
        throw new ConnectError(
          `ciphertexts of ${total} bytes for ${part.devicePayloads.length} devices exceed the server's limit of ${max}`,
          Code.InvalidArgument,
        );
      }
    }
    return parts;
  }

  /**
   * The server refused a send for mismatched devices: fix the device set (new sessions for
   * missing and stale devices, none for extra ones; a new sender key in a group that lost a
   * device), encrypt the kept plaintext again, persist the new ciphertexts and resend with the
   * same client_msg_id.
   */
  private async reencrypt(p: PendingSend, mismatch: DeviceMismatch): Promise<void> {
    const e2ee = this.e2ee;
    const id = p.item.clientMsgId;
    try {
      if (e2ee === undefined || p.item.plaintext === undefined) throw new Error("not an encrypted send");
      await e2ee.applyMismatch(mismatch, p.item.conversationId);
      const content = Buffer.from(p.item.plaintext, "base64");
      const parts = await this.seal(p.item.conversationId, content);
      const part = parts[0];
      if (parts.length !== 1 || part === undefined) {
        throw new Error(
          "after the device change the sender key must go to more devices than fit in one message; send again",
        );
      }
      const outgoing = withCiphertexts(p.outgoing, part);
      const item: OutboxItem = {
        ...p.item,
        outgoing: outboxEncoding(outgoing),
      };
      if (this.sends.get(id) !== p) return;
      await this.profile.addToOutbox(item);
      p.outgoing = outgoing;
      p.item = item;
      p.distributed = part.distributed;
    } catch (err) {
      if (this.sends.get(id) !== p) return;
      this.failSend(p, ConnectError.from(err, Code.FailedPrecondition));
      return;
    }
    if (this.sends.get(id) !== p || p.state !== "waiting") return;
    p.state = "queued";
    this.pump();
  }

  private failSend(p: PendingSend, error: ConnectError): void {
    const clientMsgId = p.item.clientMsgId;
    this.sends.delete(clientMsgId);
    if (p.timer !== undefined) clearTimeout(p.timer);
    void this.profile.removeFromOutbox(clientMsgId).catch(() => {});
    p.reject(error);
    this.emit("sendFailed", { clientMsgId, conversationId: p.item.conversationId, error });
    this.pump();
  }

  private async enqueueSend(
    conversationId: string,
    body: OutgoingBody,
    clientMsgId: string = newClientMsgId(),
    plaintext?: Uint8Array,
  ): Promise<SendResult> {
    if (this.closed) throw this.fatal ?? new ConnectError("client is closed", Code.Canceled);
    const existing = this.sends.get(clientMsgId);
    if (existing !== undefined) return existing.promise;
    const outgoing = create(OutgoingEntrySchema, { clientMsgId, conversationId, body });
    const item: OutboxItem = {
      clientMsgId,
      conversationId,
      outgoing: outboxEncoding(outgoing),
      createdAtMs: Date.now(),
      ...(plaintext !== undefined && { plaintext: Buffer.from(plaintext).toString("base64") }),
    };
    const pending = await this.addSend(item, outgoing, "persisting");
    if (pending.state === "persisting") pending.state = "queued";
    this.pump();
    return pending.promise;
  }

  /** Registers a new send and writes it to the outbox; a failed write forgets it again. */
  private async addSend(
    item: OutboxItem,
    outgoing: OutgoingEntry,
    state: PendingSend["state"],
  ): Promise<PendingSend> {
    const pending = this.newPending(item, outgoing, state);
    // Registered before the write so that sends leave in the order the app made them.
    this.sends.set(item.clientMsgId, pending);
    try {
      await this.profile.addToOutbox(item);
    } catch (err) {
      this.sends.delete(item.clientMsgId);
      throw ConnectError.from(err, Code.Internal);
    }
    return pending;
  }

  private restoreSend(item: OutboxItem): void {
    let outgoing: OutgoingEntry;
    try {
      outgoing = fromBinary(OutgoingEntrySchema, Buffer.from(item.outgoing, "base64"));
    } catch {
      void this.profile.removeFromOutbox(item.clientMsgId).catch(() => {});
      return;
    }
    if (item.sealed === false && this.e2ee === undefined) return; // kept for an encrypted open
    const pending = this.newPending(item, outgoing, item.sealed === false ? "sealing" : "queued");
    // Nobody awaits a send from a previous run; its outcome arrives as "sent" or "sendFailed".
    pending.promise.catch(() => {});
    this.sends.set(item.clientMsgId, pending);
  }

  private newPending(item: OutboxItem, outgoing: OutgoingEntry, state: PendingSend["state"]): PendingSend {
    let resolve!: (r: SendResult) => void;
    let reject!: (e: ConnectError) => void;
    const promise = new Promise<SendResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return {
      item,
      outgoing,
      state,
      retries: 0,
      mismatchRetries: 0,
      timer: undefined,
      promise,
      resolve,
      reject,
    };
  }

  /** Puts queued sends on the stream, up to the server's in-flight limit. */
  private pump(): void {
    const s = this.stream;
    if (s === undefined || !s.ready) return;
    const limit = this.limits?.maxSendsInFlight || DEFAULT_MAX_IN_FLIGHT;
    let inFlight = 0;
    for (const p of this.sends.values()) if (p.state === "inflight") inFlight += 1;
    for (const p of this.sends.values()) {
      if (inFlight >= limit) return;
      // Sends leave in order: nothing overtakes one still being encrypted or written.
      if (p.state === "sealing" || p.state === "persisting") return;
      if (p.state !== "queued") continue;
      p.state = "inflight";
      inFlight += 1;
      this.push(s, { case: "send", value: p.outgoing });
    }
  }

  private sendAcked(ack: SendAckFrame): void {
    const p = this.sends.get(ack.clientMsgId);
    if (p === undefined) return;
    this.sends.delete(ack.clientMsgId);
    if (p.timer !== undefined) clearTimeout(p.timer);
    void this.profile.removeFromOutbox(ack.clientMsgId).catch(() => {});
    const result: SendResult = {
      clientMsgId: ack.clientMsgId,
      conversationId: p.item.conversationId,
      seq: ack.seq,
      serverTimeMs: ack.serverTimeMs,
    };
    if (p.distributed !== undefined && this.e2ee !== undefined) {
      this.e2ee.keyDistributed(p.distributed).catch((err: unknown) => this.keysFailed(err));
    }
    p.resolve(result);
    this.emit("sent", result);
    this.pump();
  }

  private sendRefused(err: SendErrorFrame): void {
    const p = this.sends.get(err.clientMsgId);
    if (p === undefined) {
      this.emit("error", {
        error: new ConnectError(`send refused: ${err.message}`, err.code as Code),
        fatal: false,
      });
      return;
    }
    if (
      err.code === Code.FailedPrecondition &&
      err.mismatch !== undefined &&
      this.e2ee !== undefined &&
      p.item.plaintext !== undefined &&
      p.mismatchRetries < MAX_MISMATCH_RETRIES
    ) {
      p.mismatchRetries += 1;
      p.state = "waiting";
      void this.reencrypt(p, err.mismatch);
      this.pump();
      return;
    }
    const retryable =
      err.code === Code.Unavailable || (err.code === Code.ResourceExhausted && err.retryAfterMs > 0);
    if (retryable) {
      p.state = "waiting";
      p.retries += 1;
      const delay =
        err.retryAfterMs > 0
          ? err.retryAfterMs
          : Math.floor(Math.random() * Math.min(30_000, 250 * 2 ** p.retries));
      p.timer = setTimeout(() => {
        p.timer = undefined;
        if (p.state !== "waiting") return;
        p.state = "queued";
        this.pump();
      }, delay);
      this.pump();
      return;
    }
    this.sends.delete(err.clientMsgId);
    void this.profile.removeFromOutbox(err.clientMsgId).catch(() => {});
    const error = new ConnectError(err.message, err.code as Code);
    p.reject(error);
    this.emit("sendFailed", { clientMsgId: err.clientMsgId, conversationId: p.item.conversationId, error });
    this.pump();
  }

  // ---------------------------------------------------------------------------------------------
  // Typing and presence

  /**
   * Tells the conversation this user started (true) or stopped (false) typing. Receivers expire
   * an indicator after 10 s, so repeat true every few seconds while typing. Dropped when offline.
   */
  setTyping(conversationId: string, active: boolean): void {
    const s = this.stream;
    if (s === undefined || !s.ready) return;
    this.push(s, { case: "typing", value: { conversationId, active } });
  }

  /** Follows users' presence (each must share a conversation with this user); kept across reconnects. */
  subscribePresence(userIds: readonly string[]): void {
    const fresh = userIds.filter((id) => !this.presenceSubscriptions.has(id));
    for (const id of fresh) this.presenceSubscriptions.add(id);
    const s = this.stream;
    if (fresh.length > 0 && s?.ready === true) {
      this.push(s, { case: "presenceSubscribe", value: { subscribeUserIds: fresh } });
    }
  }

  /** Stops following users' presence. */
  unsubscribePresence(userIds: readonly string[]): void {
    const gone = userIds.filter((id) => this.presenceSubscriptions.delete(id));
    const s = this.stream;
    if (gone.length > 0 && s?.ready === true) {
      this.push(s, { case: "presenceSubscribe", value: { unsubscribeUserIds: gone } });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Unary APIs

  /** The raw generated clients, for calls this class does not wrap. */
  get api(): Pick<ServerConnection, "accounts" | "conversations" | "gateway" | "keys"> {
    return {
      accounts: this.conn.accounts,
      conversations: this.conn.conversations,
      gateway: this.conn.gateway,
      keys: this.conn.keys,
    };
  }

  /**
   * Sends one message without the stream (GatewayService.Send), for scripts and integrations.
   * Retries transient failures with the same idempotency key; not written to the outbox.
   */
  async sendUnary(
    conversationId: string,
    payload: Uint8Array | string,
    options: { clientMsgId?: string; attempts?: number } = {},
  ): Promise<SendResult> {
    const plaintext = typeof payload === "string" ? textEncoder.encode(payload) : payload;
    const clientMsgId = options.clientMsgId ?? newClientMsgId();
    const e2ee = this.e2ee;
    if (e2ee === undefined) {
      const entry = create(OutgoingEntrySchema, {
        clientMsgId,
        conversationId,
        body: { case: "message", value: { payload: await this.codec.encode(conversationId, plaintext) } },
      });
      return this.unary(entry, options.attempts);
    }
    const content = sealedContent(conversationId, { case: "message", value: {} }, plaintext, []);
    return this.sendContentUnary(conversationId, content, clientMsgId, options.attempts);
  }

  /**
   * Encrypts a SealedContent and sends it without the stream. A group's member list is read
   * again first: no membership entry reaches a client without a stream, and a removed member
   * must not hold the key of what follows. The device's prekeys are topped up too.
   */
  private async sendContentUnary(
    conversationId: string,
    content: Uint8Array,
    clientMsgId: string,
    attempts?: number,
  ): Promise<SendResult> {
    const e2ee = this.requireE2ee();
    await e2ee.ensureKeysSoon();
    await e2ee.rememberSent(clientMsgId, content);
    let parts = await this.seal(conversationId, content, true);
    const options = { attempts };
    for (let mismatchRetries = 0; ; mismatchRetries++) {
      try {
        let result: SendResult | undefined;
        for (const part of parts) {
          const id = part.keysOnly ? newClientMsgId() : clientMsgId;
          if (part.keysOnly) await e2ee.rememberSent(id, part.content);
          const entry = create(OutgoingEntrySchema, {
            clientMsgId: id,
            conversationId,
            body: messageBody(part.payload, part.devicePayloads, part.payloadType),
          });
          result = await this.unary(entry, options.attempts);
          await e2ee.keyDistributed(part.distributed);
        }
        if (result === undefined) throw new ConnectError("nothing to send", Code.Internal);
        return result;
      } catch (err) {
        const error = ConnectError.from(err);
        const mismatch =
          error.code === Code.FailedPrecondition ? error.findDetails(DeviceMismatchSchema)[0] : undefined;
        if (mismatch === undefined || mismatchRetries >= MAX_MISMATCH_RETRIES) throw error;
        await e2ee.applyMismatch(mismatch, conversationId);
        // Keys-only parts already accepted stay; the resealed parts repeat what is still needed.
        parts = await this.seal(conversationId, content, true);
      }
    }
  }

  /** GatewayService.Send with retries of transient failures under the same idempotency key. */
  private async unary(entry: OutgoingEntry, attempts = 5): Promise<SendResult> {
    const backoff = new Backoff(this.tuning.backoffBaseMs, this.tuning.backoffCapMs);
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await this.conn.gateway.send({ entry }, { timeoutMs: UNARY_TIMEOUT_MS });
        return {
          clientMsgId: entry.clientMsgId,
          conversationId: entry.conversationId,
          seq: res.seq,
          serverTimeMs: res.serverTimeMs,
        };
      } catch (err) {
        const error = ConnectError.from(err);
        const transient =
          error.code === Code.Unavailable ||
          error.code === Code.ResourceExhausted ||
          error.code === Code.DeadlineExceeded;
        if (!transient || attempt >= attempts) throw error;
        await new Promise((resolve) => setTimeout(resolve, Math.max(backoff.next(), 50)));
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Attachments (end-to-end encrypted)

  /**
   * Sends a file: encrypts it with a fresh key (AES-256-GCM), uploads the ciphertext straight to
   * the media store through a presigned URL, sends the pointer, key and digest inside an end-to-end
   * encrypted message, then claims the object for the conversation. Needs encryption.
   */
  async sendAttachment(
    conversationId: string,
    file: OutgoingAttachment,
    options: { caption?: string | Uint8Array; clientMsgId?: string } = {},
  ): Promise<SendResult & { attachment: AttachmentPointer }> {
    this.requireE2ee();
    const attachment = await this.uploadAttachment(conversationId, file);
    const caption =
      typeof options.caption === "string"
        ? textEncoder.encode(options.caption)
        : (options.caption ?? new Uint8Array());
    const result = await this.sendSealed(
      conversationId,
      sealedContent(conversationId, { case: "message", value: {} }, caption, [attachment]),
      options.clientMsgId,
      messageBody,
    );
    try {
      await this.conn.media.claimUpload({ objectId: attachment.objectId, conversationId });
    } catch (err) {
      // The message is sent; a recipient's first download claims the object too.
      this.emit("error", { error: ConnectError.from(err), fatal: false });
    }
    return { ...result, attachment };
  }

  /**
   * Encrypts and uploads a file; the pointer to send (with its key) is returned. A `path` is
   * encrypted and uploaded streaming, through a temporary file of ciphertext, so its size does not
   * bound memory; `data` is handled in memory.
   */
  async uploadAttachment(conversationId: string, file: OutgoingAttachment): Promise<AttachmentPointer> {
    const fileName = file.fileName ?? (file.path !== undefined ? basename(file.path) : "");
    const pointer = (objectId: string, secrets: AttachmentSecrets) =>
      create(AttachmentPointerSchema, {
        objectId,
        key: secrets.key,
        digest: secrets.digest,
        sizeBytes: BigInt(secrets.size - ATTACHMENT_OVERHEAD),
        ciphertextBytes: BigInt(secrets.size),
        fileName,
        contentType: file.contentType ?? "",
      });
    if (file.data !== undefined) {
      const sealed = encryptAttachment(file.data);
      const upload = await this.createUpload(conversationId, sealed.size);
      await putObject(upload.uploadUrl, sealed.ciphertext, sealed.size);
      return pointer(upload.objectId, sealed);
    }
    if (file.path === undefined)
      throw new ConnectError("an attachment needs data or a path", Code.InvalidArgument);
    const dir = await mkdtemp(join(tmpdir(), "switchboard-upload-"));
    try {
      const encrypted = join(dir, "ciphertext");
      const secrets = await encryptAttachmentFile(file.path, encrypted);
      const upload = await this.createUpload(conversationId, secrets.size);
      await putObject(upload.uploadUrl, { path: encrypted }, secrets.size);
      return pointer(upload.objectId, secrets);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  private createUpload(conversationId: string, length: number) {
    return this.conn.media.createUpload({ conversationId, lengthBytes: BigInt(length) });
  }

  /**
   * Downloads an attachment of a message in the conversation, checks its digest and decrypts it.
   * Throws AttachmentError ("digest", "authentication", "format") when the bytes are not the
   * sender's. Without `path` the plaintext is returned; with it, the download streams through a
   * temporary file of ciphertext and the plaintext is written to `path` atomically, never
   * unverified, in constant memory.
   */
  async downloadAttachment(conversationId: string, attachment: AttachmentPointer): Promise<Uint8Array>;
  async downloadAttachment(
    conversationId: string,
    attachment: AttachmentPointer,
    options: { path: string },
  ): Promise<undefined>;
  async downloadAttachment(
    conversationId: string,
    attachment: AttachmentPointer,
    options?: { path: string },
  ): Promise<Uint8Array | undefined> {
    const download = await this.conn.media.createDownload({ objectId: attachment.objectId, conversationId });
    if (options === undefined) {
      const ciphertext = (await getObject(download.downloadUrl)) as Uint8Array;
      return decryptAttachment(ciphertext, attachment.key, attachment.digest);
    }
    const dir = await mkdtemp(join(tmpdir(), "switchboard-download-"));
    try {
      const encrypted = join(dir, "ciphertext");
      await getObject(download.downloadUrl, { path: encrypted });
      await decryptAttachmentFile(encrypted, options.path, attachment.key, attachment.digest);
      return undefined;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Identity of contacts

  /**
   * The safety numbers of this user and another, one per device of theirs (each device has its own
   * identity key), as people compare them out of band. A device never contacted is fetched from the
   * key directory first (which opens a session with it).
   */
  async safetyNumbers(peerUserId: string): Promise<ContactSafetyNumber[]> {
    return this.requireE2ee().safetyNumbers(peerUserId);
  }

  /**
   * Marks a contact device's identity key as verified, the one its safety number shows (its
   * changes are then refused). After such a refused change (`identityChanged` true in
   * safetyNumbers) this is the one way to accept the new key: call it once the user compared the
   * new number with the contact's; the device's old session goes and messages resume.
   */
  async verifyContact(peerUserId: string, peerDeviceId: string): Promise<void> {
    await this.requireE2ee().verify({ userId: peerUserId, deviceId: peerDeviceId });
  }

  /** Looks users up by id and/or username; unknown ones are left out. */
  async lookupUsers(query: { userIds?: readonly string[]; usernames?: readonly string[] }): Promise<User[]> {
    const res = await this.conn.accounts.lookupUsers({
      userIds: [...(query.userIds ?? [])],
      usernames: [...(query.usernames ?? [])],
    });
    return res.users;
  }

  /** One user by username; NOT_FOUND if there is none. */
  async userByUsername(username: string): Promise<User> {
    const [user] = await this.lookupUsers({ usernames: [username] });
    if (user === undefined) throw new ConnectError(`no user named "${username}"`, Code.NotFound);
    return user;
  }

  /** Issues a one-time code with which another device joins this user. */
  async createLinkCode(): Promise<{ code: string; expiresAtMs: bigint }> {
    const res = await this.conn.accounts.createLinkCode({});
    return { code: res.code, expiresAtMs: res.expiresAtMs };
  }

  /**
   * Registers where this device gets push wake-ups while offline (replacing any earlier target):
   * `{ case: "webPush", value: { endpoint, p256dh, auth } }` from a PushSubscription,
   * `{ case: "fcm", value: { token } }`, or `{ case: "apns", value: { token, topic, environment } }`.
   */
  async setPushTarget(target: MessageInitShape<typeof SetPushTargetRequestSchema>["target"]): Promise<void> {
    await this.conn.accounts.setPushTarget(target === undefined ? {} : { target });
  }

  /** Stops push wake-ups to this device. */
  async removePushTarget(): Promise<void> {
    await this.conn.accounts.removePushTarget({});
  }

  /** This user's privacy settings as in force (the server's defaults where never set). */
  async getPrivacy(): Promise<PrivacyChoices> {
    return privacyFromWire((await this.conn.accounts.getPrivacy({})).settings);
  }

  /**
   * Changes some of this user's privacy settings (who may add them to groups, who may start a
   * direct conversation with them); settings not given keep their value. Returns all of them.
   */
  async setPrivacy(changes: Partial<PrivacyChoices>): Promise<PrivacyChoices> {
    const res = await this.conn.accounts.setPrivacy({ settings: privacyChangesToWire(changes) });
    return privacyFromWire(res.settings);
  }

  /** This user's devices. */
  async listDevices(includeRevoked = false): Promise<Device[]> {
    return (await this.conn.accounts.listDevices({ includeRevoked })).devices;
  }

  /** Revokes one of this user's devices. */
  async revokeDevice(deviceId: string): Promise<Device | undefined> {
    return (await this.conn.accounts.revokeDevice({ deviceId })).device;
  }

  /** The direct conversation with another user (created on first use). */
  async openDirect(peerUserId: string): Promise<Conversation> {
    return required((await this.conn.conversations.openDirect({ peerUserId })).conversation, "conversation");
  }

  /** Creates a group with this user as admin. */
  async createGroup(title: string, memberUserIds: readonly string[] = []): Promise<Conversation> {
    const res = await this.conn.conversations.createGroup({ title, memberUserIds: [...memberUserIds] });
    return required(res.conversation, "conversation");
  }

  /** Adds members to a group (admins only); returns the membership entry, if any was written. */
  async addMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return (await this.conn.conversations.addMembers({ conversationId, userIds: [...userIds] })).entry;
  }

  /** Removes members from a group (admins only). */
  async removeMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return (await this.conn.conversations.removeMembers({ conversationId, userIds: [...userIds] })).entry;
  }

  /** Leaves a group. */
  async leaveGroup(conversationId: string): Promise<Entry | undefined> {
    return (await this.conn.conversations.leaveGroup({ conversationId })).entry;
  }

  /** Changes members' roles (admins only). */
  async setRole(
    conversationId: string,
    userIds: readonly string[],
    role: MemberRole,
  ): Promise<Entry | undefined> {
    return (await this.conn.conversations.setRole({ conversationId, userIds: [...userIds], role })).entry;
  }

  /** Renames a group (admins only). */
  async renameGroup(conversationId: string, title: string): Promise<Entry | undefined> {
    return (await this.conn.conversations.renameGroup({ conversationId, title })).entry;
  }

  /** This user's conversations, most recently active first. */
  async listConversations(): Promise<Conversation[]> {
    return (await this.conn.conversations.listConversations({})).conversations;
  }

  /** One conversation with its members. */
  async getConversation(conversationId: string): Promise<{ conversation: Conversation; members: Member[] }> {
    const res = await this.conn.conversations.getConversation({ conversationId });
    return { conversation: required(res.conversation, "conversation"), members: res.members };
  }

  /** Mutes a conversation's push wake-ups until a time (ms since the epoch); 0 unmutes. */
  async setMute(conversationId: string, mutedUntilMs: bigint | number): Promise<void> {
    await this.conn.conversations.setMute({ conversationId, mutedUntilMs: BigInt(mutedUntilMs) });
  }

  /** A page of a conversation's log, decoded. */
  async getHistory(
    conversationId: string,
    options: { afterSeq?: bigint | number; limit?: number } = {},
  ): Promise<{ entries: IncomingEntry[]; lastSeq: bigint; hasMore: boolean }> {
    const res = await this.conn.conversations.getHistory({
      conversationId,
      afterSeq: BigInt(options.afterSeq ?? 0),
      limit: options.limit ?? 0,
    });
    const entries: IncomingEntry[] = [];
    for (const raw of res.entries) entries.push(await this.toIncoming(raw));
    // Retry requests this page asked for go out before the caller (a command) closes.
    await Promise.allSettled([...this.retrySends]);
    // A device that only reads history must top up its one-time prekeys too.
    await this.e2ee?.ensureKeysSoon().catch((err: unknown) => this.keysFailed(err));
    return { entries, lastSeq: res.lastSeq, hasMore: res.hasMore };
  }
}

function credentialsFrom(
  serverUrl: string,
  user: User | undefined,
  credential: { userId: string; deviceId: string; deviceSecret: string } | undefined,
): DeviceCredentials {
  const u = required(user, "user");
  const c = required(credential, "credential");
  return {
    serverUrl,
    userId: c.userId || u.userId,
    username: u.username,
    deviceId: c.deviceId,
    deviceSecret: c.deviceSecret,
  };
}

function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new ConnectError(`server response lacks ${what}`, Code.Internal);
  return value;
}

/** How a send is kept in the outbox: its OutgoingEntry in base64. */
function outboxEncoding(outgoing: OutgoingEntry): string {
  return Buffer.from(toBinary(OutgoingEntrySchema, outgoing)).toString("base64");
}

/** A copy of a send with the payload and device ciphertexts of a sealed part in its body. */
function withCiphertexts(outgoing: OutgoingEntry, part: SealedPart): OutgoingEntry {
  const copy = clone(OutgoingEntrySchema, outgoing);
  const body = copy.body;
  if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") {
    throw new Error(`a ${body.case} send has no ciphertexts`);
  }
  body.value.payload = part.payload;
  body.value.payloadType = part.payloadType;
  body.value.devicePayloads = part.devicePayloads;
  return copy;
}

/** A message body with the given payload, per-device ciphertexts and payload type. */
const messageBody: BodyOf = (payload, devicePayloads, payloadType) => ({
  case: "message",
  value: { payload, devicePayloads, payloadType },
});

/**
 * The plaintext of an end-to-end encrypted message, edit or reaction, bound to its conversation,
 * its kind of entry and its target (checked by the recipient: checkContext).
 */
function sealedContent(
  conversationId: string,
  template: OutgoingBody,
  payload: Uint8Array,
  attachments: AttachmentPointer[],
): Uint8Array {
  const targetSeq =
    template.case === "edit" || template.case === "reaction" ? BigInt(template.value.targetSeq ?? 0) : 0n;
  return toBinary(
    SealedContentSchema,
    create(SealedContentSchema, {
      payload,
      attachments,
      conversationId,
      kind: contentKindOf(template.case),
      targetSeq,
    }),
  );
}
