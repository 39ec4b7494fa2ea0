import { create } from "@bufbuild/protobuf";
import type { ConnectError } from "@connectrpc/connect";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type {
  ConnectRequest,
  ConnectResponse,
  PrekeysLowFrame,
  PresenceFrame,
  ReceiptFrame,
  TypingEventFrame,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { BlocksChangedFrameSchema, PrivacyChangedFrameSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import type { Principal } from "../common/auth.js";
import { type DomainError, LimitError, UnavailableError } from "../common/errors.js";
import { newId } from "../common/ids.js";
import { Outbound } from "./outbound.js";
import { Backlog } from "./session/backlog.js";
import type { StreamContext } from "./session/context.js";
import { FRAME_ENTRIES, frame } from "./session/frames.js";
import { type FrameSink, InboundFrames } from "./session/inbound.js";
import { Sends } from "./session/sends.js";
import type { GatewayServices, SessionHost } from "./types.js";

/** The subscriptions of a stream that has none: one empty set for all of them. */
const NO_SUBSCRIPTIONS: ReadonlySet<string> = new Set();

export { boundPage } from "./session/frames.js";

/**
 * One device stream: a facade over its parts (session/): InboundFrames reads the device's frames
 * and dispatches them, Sends takes each send from frame to ack, the Backlog resumes from the
 * device's cursors and pushes what the device is owed in seq order (live, or from the log when
 * it falls behind), and the Outbound queue bounds what waits for the device. The facade owns the
 * stream's life: ready, the end (with or without an error), and ending a device that does not
 * read.
 */
export class Session implements StreamContext {
  /** The stream's id ("s_..."), as in its route and its logs. */
  readonly id = newId("s");
  /** The frames waiting for the device; the gateway's connect handler drains it. */
  readonly outbound: Outbound;
  /** When the stream opened, in milliseconds since the Unix epoch. */
  readonly openedAtMs: number;
  /**
   * The users whose presence this stream receives, kept by the gateway (addSubscription); made
   * on first use, as most streams never watch anyone (an empty Set is about 150 bytes a stream).
   */
  private watched: Set<string> | undefined;
  /** Of those, the users with a direct conversation with this user (last_seen "contacts"). */
  private directContacts: Set<string> | undefined;
  private readonly backlog: Backlog;
  private readonly sends: Sends;
  private readonly inbound: InboundFrames;
  private closed = false;

  constructor(
    readonly principal: Principal,
    private readonly core: SessionHost<Session>,
  ) {
    const { limits } = core;
    this.outbound = new Outbound(
      {
        frames: limits.outboundQueueFrames,
        bytes: limits.outboundQueueBytes,
        frameBytes: limits.maxPageBytes,
        frameEntries: FRAME_ENTRIES,
        stallMs: limits.outboundStallMs,
      },
      () =>
        this.notReading(
          "stream_stalled",
          `the device has not read its stream for ${limits.outboundStallMs} ms while frames wait; reconnect`,
        ),
    );
    this.openedAtMs = core.now();
    this.backlog = new Backlog(this);
    this.sends = new Sends(this, principal, this.backlog.ownSends);
    this.inbound = new InboundFrames(this, this.sends, this.backlog, this.openedAtMs);
  }

  /** The stream's user. */
  get userId(): string {
    return this.principal.userId;
  }

  /** The stream's device. */
  get deviceId(): string {
    return this.principal.deviceId;
  }

  /** True once the stream ended. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** What the gateway shares with every stream. */
  get host(): GatewayServices {
    return this.core;
  }

  /** Sends ready, starts reading the device's frames and pushes its backlog. */
  start(requests: AsyncIterable<ConnectRequest>): void {
    this.begin();
    void this.inbound.run(requests);
  }

  /**
   * As start, for a transport that parses the device's frames itself and pushes each as it is
   * read (device-stream.ts): the sink it returns takes them.
   */
  startPushed(): FrameSink {
    this.begin();
    return this.inbound;
  }

  private begin(): void {
    const { limits } = this.core;
    this.answer(
      frame({
        case: "ready",
        value: {
          userId: this.userId,
          deviceId: this.deviceId,
          sessionId: this.id,
          serverTimeMs: BigInt(this.core.now()),
          limits: {
            maxPayloadBytes: limits.maxPayloadBytes,
            maxSendsInFlight: limits.maxSendsInFlight,
            sendsPerSecond: limits.sendsPerSecond,
            sendBurst: limits.sendBurst,
          },
          streamUrl: this.core.streamUrl,
        },
      }),
    );
    void this.resume();
  }

  /**
   * Ends the stream. With an error the device gets that status after the frames already queued
   * (the error boundary gives a domain error its code); without one the stream ends cleanly.
   */
  close(error?: DomainError | ConnectError): void {
    if (this.closed) return;
    this.closed = true;
    this.outbound.end(error);
    this.core.detach(this);
  }

  /**
   * Queues an answer to the device's own request. A device whose queue is full even for those
   * (twice the outbound bounds) is not reading: its stream ends with RESOURCE_EXHAUSTED and
   * what was queued for it is dropped, so it holds no more memory.
   */
  answer(f: ConnectResponse): void {
    if (this.closed || this.outbound.force(f)) return;
    const { limits } = this.core;
    this.notReading(
      "stream_not_reading",
      `the device does not read its stream: ${this.outbound.size} frames, ${this.outbound.bytes} bytes queued ` +
        `(at most ${limits.outboundQueueFrames} frames, ${limits.outboundQueueBytes} bytes, and as ` +
        "much again for answers)",
    );
  }

  /** A committed entry from fanout. */
  deliverEntry(entry: Entry): void {
    if (this.closed) return;
    this.backlog.deliver(entry);
  }

  /** A receipt, typing indicator or presence change: dropped if the device is behind. */
  deliverEvent(value: ConnectResponse["frame"]): void {
    if (this.closed) return;
    if (!this.outbound.offer(frame(value))) this.core.metrics.droppedEvents++;
  }

  /** A delivered or read receipt of another member. */
  deliverReceipt(receipt: ReceiptFrame): void {
    // Read receipts only when the reader and this user both have them on (privacy.ts).
    this.core.privacy.receiptVisible(receipt, this.userId, () => {
      if (this.closed) return;
      if (!this.outbound.offerReceipt(receipt)) this.core.metrics.droppedEvents++;
    });
  }

  /** Another member (or another device of this user) typing. */
  deliverTyping(typing: TypingEventFrame): void {
    // The user's other devices show it; the device that is typing knows already.
    if (typing.deviceId === this.deviceId) return;
    this.core.blocks.typingVisible(typing, this.userId, () =>
      this.deliverEvent({ case: "typing", value: typing }),
    );
  }

  /** A presence change of a user this stream subscribed to. */
  deliverPresence(presence: PresenceFrame): void {
    // Nor online or last seen: to a blocked user the blocker's presence never changes.
    // A last_seen setting that hides it looks the same: no frame at all (privacy.ts).
    this.core.blocks.unlessBlocked(presence.userId, this.userId, () =>
      this.core.privacy.presenceVisible(
        presence.userId,
        this.userId,
        this.directContacts?.has(presence.userId) ?? false,
        () => this.deliverEvent({ case: "presence", value: presence }),
      ),
    );
  }

  /** Tells the device its user's privacy settings changed; droppable, as it reads them on connect. */
  deliverPrivacyChanged(): void {
    this.deliverEvent({ case: "privacyChanged", value: create(PrivacyChangedFrameSchema) });
  }

  /** Tells the device its user's blocks changed; droppable, as the device lists them on connect. */
  deliverBlocksChanged(): void {
    this.deliverEvent({ case: "blocksChanged", value: create(BlocksChangedFrameSchema) });
  }

  /** Tells the device to upload more one-time prekeys; droppable, as it also asks on connect. */
  deliverPrekeysLow(notice: PrekeysLowFrame): void {
    this.deliverEvent({ case: "prekeysLow", value: notice });
  }

  /**
   * Catches up from the log whatever was committed while this stream's route was missing from
   * the route store (fanout delivered it to no gateway); the gateway calls it once the route is
   * back.
   */
  resync(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return this.backlog.refresh();
  }

  /** The users whose presence this stream receives. */
  get subscriptions(): ReadonlySet<string> {
    return this.watched ?? NO_SUBSCRIPTIONS;
  }

  /** The gateway's record that this stream receives the user's presence. */
  addSubscription(userId: string): void {
    this.watched ??= new Set();
    this.watched.add(userId);
  }

  /** The gateway's record that this stream no longer receives the user's presence. */
  removeSubscription(userId: string): void {
    this.watched?.delete(userId);
  }

  /** Sends this stream the user's presence changes from now on. */
  watchPresence(userId: string, direct = false): void {
    if (direct) {
      this.directContacts ??= new Set();
      this.directContacts.add(userId);
    } else this.directContacts?.delete(userId);
    this.core.subscribePresence(this, userId);
  }

  /** Stops sending this stream the user's presence changes. */
  unwatchPresence(userId: string): void {
    this.directContacts?.delete(userId);
    this.core.unsubscribePresence(this, userId);
  }

  /**
   * Makes the stream reachable by fanout, then pushes what the device is owed since its cursors
   * and says so (caught_up). The backlog is read only once the route exists: an entry committed
   * before is in the backlog, one committed after reaches the stream live.
   */
  private async resume(): Promise<void> {
    try {
      await this.core.register(this);
      const entries = await this.backlog.resume();
      if (entries === undefined) return;
      this.answer(
        frame({
          case: "caughtUp",
          value: { entries: BigInt(entries), expiredEntries: BigInt(this.backlog.expiredPushed) },
        }),
      );
    } catch (err) {
      this.core.log.warn({ err, sessionId: this.id }, "initial sync failed");
      this.close(new UnavailableError("could not read the device's pending entries; reconnect"));
    }
  }

  /** Ends a stream whose device does not read: drops its queue, RESOURCE_EXHAUSTED, counted. */
  private notReading(reason: string, message: string): void {
    if (this.closed) return;
    this.closed = true;
    this.core.refused(reason, "stream ended: the device does not read its frames", {
      userId: this.userId,
      deviceId: this.deviceId,
      sessionId: this.id,
      queuedFrames: this.outbound.size,
      queuedBytes: this.outbound.bytes,
    });
    this.outbound.abort(new LimitError(message));
    this.core.detach(this);
  }
}
