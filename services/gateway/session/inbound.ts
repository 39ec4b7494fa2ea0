import { Code } from "@connectrpc/connect";
import type { ConnectRequest, ConversationCursor } from "../../../gen/switchboard/v1/gateway_pb.js";
import { InvalidInputError, LimitError } from "../../common/errors.js";
import { TokenBucket } from "../../common/rate-limit/token-bucket.js";
import { requireId } from "../../common/validate.js";
import type { Backlog } from "./backlog.js";
import type { StreamContext } from "./context.js";
import { frame, inBand } from "./frames.js";
import type { Sends } from "./sends.js";

/** Cursors one ack or read frame may carry. */
const CURSORS_PER_FRAME = 256;

/** Where a transport that reads the device's bytes itself pushes the frames it parses. */
export interface FrameSink {
  /** Takes one frame; false once the stream wants no more frames. */
  frame(request: ConnectRequest): boolean;
  /** The device ended its side; resolves once every send is answered. */
  end(): Promise<void>;
  /** Reading the device's side failed. */
  fail(err: unknown): void;
}

/**
 * Reads the device's frames and hands each to its part of the stream: sends to Sends, sync
 * requests to the Backlog, cursors to the gateway's cursor batcher, typing to the sequencer,
 * presence subscriptions to the gateway. A frame it refuses is answered in band (an error frame
 * naming it) and the stream goes on; a flood of frames or an unreadable one ends the stream.
 */
export class InboundFrames implements FrameSink {
  private readonly frames: TokenBucket;

  constructor(
    private readonly stream: StreamContext,
    private readonly sends: Sends,
    private readonly backlog: Backlog,
    openedAtMs: number,
  ) {
    const { limits } = stream.host;
    this.frames = new TokenBucket(limits.framesPerSecond, limits.frameBurst, openedAtMs);
  }

  /**
   * Reads frames from an iterable (connect-node's handler) until the device half-closes (then
   * answers its sends and ends cleanly) or the read fails.
   */
  async run(requests: AsyncIterable<ConnectRequest>): Promise<void> {
    try {
      for await (const request of requests) {
        if (!this.frame(request)) return;
      }
    } catch (err) {
      this.fail(err);
      return;
    }
    await this.end();
  }

  /**
   * Takes one frame as the transport reads it (device-stream.ts pushes them: no async iterator
   * per read). False once the stream is over: the transport stops reading.
   */
  frame(request: ConnectRequest): boolean {
    const { host } = this.stream;
    if (this.stream.isClosed) return false;
    const wait = this.frames.take(host.now());
    if (wait > 0) {
      host.metrics.floodClosures++;
      this.stream.close(
        new LimitError(
          `too many frames: at most ${host.limits.framesPerSecond} per second (burst ${host.limits.frameBurst})`,
        ),
      );
      return false;
    }
    this.dispatch(request);
    return true;
  }

  /** The device half-closed: answer what it sent, then end cleanly. */
  async end(): Promise<void> {
    await this.sends.settled();
    this.stream.close();
  }

  /** Reading failed: the transport's own failure to read a frame (too large, not parseable). */
  fail(err: unknown): void {
    const e = inBand(err);
    if (e.code === Code.ResourceExhausted) {
      this.stream.close(new LimitError(`frame too large: ${e.rawMessage}`));
    } else if (e.code === Code.InvalidArgument || e.code === Code.Internal) {
      this.stream.close(new InvalidInputError(`malformed frame: ${e.rawMessage}`));
    } else {
      this.stream.close();
    }
  }

  private dispatch(request: ConnectRequest): void {
    const f = request.frame;
    switch (f.case) {
      case "send":
        this.sends.receive(f.value);
        return;
      case "ack":
        this.onCursors("ack", f.value.cursors, false);
        return;
      case "read":
        this.onCursors("read", f.value.cursors, true);
        return;
      case "typing":
        this.onTyping(f.value.conversationId, f.value.active);
        return;
      case "presenceSubscribe":
        void this.onPresence(f.value.subscribeUserIds, f.value.unsubscribeUserIds);
        return;
      case "syncRequest":
        this.backlog.sync(f.value.requestId, f.value.conversationId, f.value.afterSeq, f.value.limit);
        return;
      case "call":
        // Relayed live to the peer's devices, never stored (calls/relay.ts).
        this.stream.host.calls.receive(this.stream, f.value);
        return;
      case "options":
        this.backlog.ownSends.enabled = f.value.omitOwnSends;
        this.stream.outbound.batchReceipts = f.value.batchReceipts;
        return;
      case "ping":
        this.stream.answer(
          frame({
            case: "pong",
            value: {
              nonce: f.value.nonce,
              serverTimeMs: BigInt(this.stream.host.now()),
            },
          }),
        );
        return;
      default:
        // A frame from a newer protocol version, or an empty one: refuse it, keep the stream.
        this.refuse("unknown", Code.InvalidArgument, "empty frame or a frame type this server does not know");
    }
  }

  /** Answers a frame with an error naming it; the stream goes on. */
  private refuse(frameName: string, code: Code, message: string): void {
    this.stream.answer(
      frame({
        case: "error",
        value: { frame: frameName, code, message },
      }),
    );
  }

  private onCursors(name: "ack" | "read", cursors: ConversationCursor[], read: boolean): void {
    if (cursors.length > CURSORS_PER_FRAME) {
      this.refuse(
        name,
        Code.InvalidArgument,
        `at most ${CURSORS_PER_FRAME} cursors per frame, got ${cursors.length}`,
      );
      return;
    }
    const { userId, deviceId, host } = this.stream;
    for (const c of cursors) {
      try {
        requireId("conversation_id", c.conversationId, "conversation");
      } catch (err) {
        this.refuse(name, Code.InvalidArgument, inBand(err).rawMessage);
        continue;
      }
      host.cursors.add(userId, deviceId, c.conversationId, c.seq, read ? c.seq : 0n);
    }
  }

  private onTyping(conversationId: string, active: boolean): void {
    try {
      requireId("conversation_id", conversationId, "conversation");
    } catch (err) {
      this.refuse("typing", Code.InvalidArgument, inBand(err).rawMessage);
      return;
    }
    const { userId, deviceId } = this.stream;
    this.stream.host.sequencer
      .relayTyping({ userId, deviceId, conversationId, active })
      .catch((err: unknown) => {
        const e = inBand(err);
        this.refuse("typing", e.code, e.rawMessage);
      });
  }

  private async onPresence(subscribe: string[], unsubscribe: string[]): Promise<void> {
    const { host } = this.stream;
    const ids = [...subscribe, ...unsubscribe];
    if (ids.some((id) => !/^u_[0-9a-z]{26}$/.test(id))) {
      this.refuse("presence_subscribe", Code.InvalidArgument, "user ids must be user ids (u_...)");
      return;
    }
    for (const id of unsubscribe) this.stream.unwatchPresence(id);
    const wanted = [...new Set(subscribe)].filter((id) => !this.stream.subscriptions.has(id));
    if (wanted.length === 0) return;
    const max = host.limits.maxPresenceSubscriptions;
    if (this.stream.subscriptions.size + wanted.length > max) {
      this.refuse(
        "presence_subscribe",
        Code.ResourceExhausted,
        `at most ${max} presence subscriptions per stream`,
      );
      return;
    }
    try {
      const { contactUserIds, directContactUserIds } = await host.sequencer.findContacts({
        userId: this.stream.userId,
        peerUserIds: wanted,
      });
      const refused = wanted.filter((id) => !contactUserIds.includes(id));
      if (refused.length > 0) {
        this.refuse(
          "presence_subscribe",
          Code.PermissionDenied,
          `presence is visible only for users you share a conversation with: ${refused.join(", ")}`,
        );
      }
      if (contactUserIds.length === 0 || this.stream.isClosed) return;
      for (const id of contactUserIds) this.stream.watchPresence(id, directContactUserIds.includes(id));
      // One read of everyone's privacy settings for the first frames (privacy.ts); later changes
      // are then decided from the cache, in the order they come.
      const [{ presence }] = await Promise.all([
        host.presence.getPresence({ userIds: contactUserIds }),
        host.privacy.of([this.stream.userId, ...contactUserIds]).catch(() => undefined),
      ]);
      for (const p of presence) this.stream.deliverPresence(p);
    } catch (err) {
      const e = inBand(err);
      this.refuse("presence_subscribe", e.code, e.rawMessage);
    }
  }
}
