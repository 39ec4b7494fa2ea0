import { Code } from "@connectrpc/connect";
import type { OutgoingEntry } from "../../../gen/switchboard/v1/entry_pb.js";
import type { Principal } from "../../common/auth.js";
import { DomainError, LimitError, UnavailableError, withoutStack } from "../../common/errors.js";
import { endSpan, injectContext, ROOT_CONTEXT, SpanKind, startSpan } from "../../common/telemetry.js";
import { requireClientMsgId, requireId } from "../../common/validate.js";
import type { SendResult } from "../batchers.js";
import { mismatchOf } from "../device-set.js";
import type { StreamContext } from "./context.js";
import { frame, inBand } from "./frames.js";
import type { OwnSends } from "./own-sends.js";
import { SendHold } from "./send-hold.js";

/** Where the chains start: one settled promise for every stream, not two a stream. */
const SETTLED: Promise<void> = Promise.resolve();

/**
 * The sends of one stream, from frame to ack: validation, the in-flight bound, the per-device
 * rate limit, the device-set check of pairwise ciphertexts, and the append. Sends reach the
 * sequencer in the order the device sent them, whatever each waits for; each is answered with
 * a send_ack or a send_error on its client_msg_id, never by ending the stream.
 */
export class Sends {
  private inFlight = 0;
  /** Sends waiting for an asynchronous rate-limit answer, in frame order. */
  private rateChain: Promise<void> = SETTLED;
  /** Sends waiting for (or queued behind) a device-set check, in frame order. */
  private checkChain: Promise<void> = SETTLED;
  private checksPending = 0;
  private idle: (() => void) | undefined;
  /** Send frames read on this stream so far: each send's ordinal is its position among them. */
  private received = 0;
  /** After a refusal the device retries, the later sends wait for that send to come back. */
  private readonly hold = new SendHold();

  constructor(
    private readonly stream: StreamContext,
    private readonly principal: Principal,
    /** Sends the device files itself at send_ack (omit_own_sends); the live path skips them. */
    private readonly own: OwnSends,
  ) {}

  /** Resolves once no send is in flight (or the stream ended), so a half-close answers every send. */
  async settled(): Promise<void> {
    while (this.inFlight > 0 && !this.stream.isClosed) await new Promise<void>((r) => (this.idle = r));
  }

  /** A send frame. */
  receive(entry: OutgoingEntry): void {
    const { host } = this.stream;
    const { limits } = host;
    const ordinal = ++this.received;
    try {
      requireClientMsgId(entry.clientMsgId);
      requireId("conversation_id", entry.conversationId, "conversation");
      host.checkEntrySize(entry);
    } catch (err) {
      this.refuse(entry, ordinal, err);
      return;
    }
    if (this.inFlight >= limits.maxSendsInFlight) {
      host.metrics.rejectedInFlight++;
      this.refuse(
        entry,
        ordinal,
        withoutStack(
          () =>
            new LimitError(`too many sends in flight: at most ${limits.maxSendsInFlight} per stream`, {
              retryAfterMs: 50,
            }),
        ),
      );
      return;
    }
    // Counted from here, so the in-flight bound also covers sends waiting for the rate limiter.
    this.inFlight++;
    const receivedAt = performance.now();
    const wait = host.takeSendToken(this.stream.deviceId);
    if (typeof wait === "number") {
      this.afterRateLimit(entry, ordinal, wait, receivedAt);
      return;
    }
    // A shared (Redis) limiter answers asynchronously; chaining keeps this stream's sends in the
    // order the device sent them, so they are sequenced in that order.
    this.rateChain = this.rateChain.then(async () => {
      let w: number;
      try {
        w = await wait;
      } catch {
        w = 0; // The limiter fails open; a broken limiter must not stop messaging.
      }
      this.afterRateLimit(entry, ordinal, w, receivedAt);
    });
  }

  /**
   * Answers a send with its refusal, in band: the stream goes on. The retry hint is the domain
   * error's own; without one, half a second for UNAVAILABLE (the send may be retried as it is)
   * and none otherwise. A refusal the device retries (UNAVAILABLE, RESOURCE_EXHAUSTED with a
   * hint, a device mismatch to encrypt again for) holds the stream's later sends to the same
   * conversation until the refused one comes back (send-hold.ts).
   */
  private refuse(entry: OutgoingEntry, ordinal: number, err: unknown, error = inBand(err)): void {
    const hinted = err instanceof DomainError ? err.retryAfterMs : undefined;
    const retryAfterMs = hinted ?? (error.code === Code.Unavailable ? 500 : 0);
    const mismatch = mismatchOf(error);
    if (
      error.code === Code.Unavailable ||
      (error.code === Code.ResourceExhausted && retryAfterMs > 0) ||
      mismatch !== undefined
    ) {
      this.hold.refused(entry.conversationId, entry.clientMsgId, ordinal, retryAfterMs);
    }
    this.stream.answer(
      frame({
        case: "sendError",
        value: {
          clientMsgId: entry.clientMsgId,
          conversationId: entry.conversationId,
          code: error.code,
          message: error.rawMessage,
          retryAfterMs,
          mismatch,
        },
      }),
    );
  }

  private afterRateLimit(entry: OutgoingEntry, ordinal: number, wait: number, receivedAt: number): void {
    const { host } = this.stream;
    const { limits } = host;
    if (wait > 0) {
      host.metrics.rejectedRate++;
      this.refuse(
        entry,
        ordinal,
        withoutStack(
          () =>
            new LimitError(
              `send rate limit: at most ${limits.sendsPerSecond} per second per device (burst ${limits.sendBurst})`,
              { retryAfterMs: wait },
            ),
        ),
      );
      this.done();
      return;
    }
    // The block check (blocks.ts) and the device-set check; undefined when neither must wait.
    const check = host.blocks.checkSend(host.devices, this.principal, entry);
    if (check === undefined && this.checksPending === 0) {
      this.append(entry, ordinal, receivedAt);
      return;
    }
    // A send with device payloads waits for its device-set check (checks run concurrently);
    // every later send of this stream queues behind it, so sends reach the sequencer in frame
    // order.
    check?.catch(() => {});
    this.checksPending++;
    this.checkChain = this.checkChain
      .then(() => check ?? entry)
      .then(
        (checked) => this.append(checked, ordinal, receivedAt),
        (err: unknown) => {
          host.observe.sendAck((performance.now() - receivedAt) / 1000, "error");
          this.refuse(entry, ordinal, err);
          this.done();
        },
      )
      .finally(() => {
        this.checksPending--;
      });
  }

  private append(entry: OutgoingEntry, ordinal: number, receivedAt: number): void {
    const { host } = this.stream;
    const held = this.hold.check(entry.conversationId, entry.clientMsgId, ordinal);
    if (held !== undefined) {
      host.refused(
        "send_held",
        "send refused: an earlier send to the conversation on this stream was refused and not sent again yet",
        {
          userId: this.stream.userId,
          deviceId: this.stream.deviceId,
          sessionId: this.stream.id,
        },
      );
      this.refuse(
        entry,
        ordinal,
        withoutStack(
          () =>
            new UnavailableError(
              `send held: an earlier send to this conversation on this stream (client_msg_id ${this.hold.heldFor(entry.conversationId)}) was refused; send it again first, then this one`,
              { retryAfterMs: held },
            ),
        ),
      );
      this.done();
      return;
    }
    // A send starts its own trace: the stream it arrived on lives far longer than one message.
    const { span, ctx } = startSpan("gateway.send", ROOT_CONTEXT, {
      kind: SpanKind.SERVER,
      attributes: {
        "switchboard.conversation_id": entry.conversationId,
        "switchboard.instance": host.id,
      },
    });
    const failed = (err: unknown) => {
      host.observe.sendAck((performance.now() - receivedAt) / 1000, "error");
      const error = inBand(err);
      endSpan(span, error);
      this.refuse(entry, ordinal, err, error);
    };
    let appended: Promise<SendResult>;
    try {
      // Admission refuses at once (by throwing), so the hold is in place before the next frame.
      appended = host.sends.append(this.stream.userId, this.stream.deviceId, entry, injectContext(ctx));
    } catch (err) {
      failed(err);
      this.done();
      return;
    }
    this.own.appending(entry.clientMsgId);
    appended
      .then((r) => {
        host.observe.sendAck((performance.now() - receivedAt) / 1000, "ok");
        span.setAttribute("switchboard.seq", Number(r.seq));
        endSpan(span);
        this.stream.answer(
          frame({
            case: "sendAck",
            value: {
              clientMsgId: entry.clientMsgId,
              conversationId: entry.conversationId,
              seq: r.seq,
              serverTimeMs: r.serverTimeMs,
              expiresAtMs: r.expiresAtMs,
            },
          }),
        );
      }, failed)
      .finally(() => this.done());
  }

  private done(): void {
    this.inFlight--;
    if (this.inFlight === 0) this.idle?.();
  }
}
