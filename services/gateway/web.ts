import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";
import { ConnectRequestSchema, type ConversationCursor } from "../../gen/switchboard/v1/gateway_pb.js";
import type { Principal } from "../common/auth.js";
import { InvalidInputError, LimitError } from "../common/errors.js";
import { requireId, requireIds } from "../common/validate.js";
import type { GatewayCore } from "./gateway.js";

/** Cursors one Ack list may carry, as one ack or read frame of the stream. */
const CURSORS_PER_CALL = 256;

/**
 * The web binding of the device stream (docs/protocol.md, "The web binding"). Browsers cannot
 * hold a bidirectional stream, so a Subscribe stream is a device session like Connect's whose
 * receiving half is the response stream and whose frames from the device arrive as unary calls
 * of the same authenticated device: Send (handlers.ts), Ack and SetTyping here, GetHistory for
 * gaps. Nothing binds a call to the gateway holding the stream: cursors, typing and sends are
 * the device's, not the stream's, so behind a load balancer any gateway answers them. The
 * stream's frame limit applies to them per device, through the gateway's (shared) rate limiter.
 */
export function webCalls(
  core: GatewayCore,
  principal: (ctx: HandlerContext) => Principal,
): Pick<ServiceImpl<typeof GatewayService>, "subscribe" | "ack" | "setTyping"> {
  /** Refuses a call past the device's frame budget with the wait in retry-after-ms. */
  async function takeFrame(p: Principal): Promise<void> {
    let wait: number;
    try {
      wait = await core.takeFrameToken(p.deviceId);
    } catch {
      wait = 0; // The limiter fails open, as for sends: a broken limiter must not stop messaging.
    }
    if (wait > 0) {
      core.refused("unary_frame_rate", "ack or typing call refused: the device's frame budget is spent", {
        deviceId: p.deviceId,
      });
      throw new LimitError(
        `too many frames: at most ${core.limits.framesPerSecond} per second per device (burst ${core.limits.frameBurst}); retry in ${wait} ms`,
        { retryAfterMs: wait },
      );
    }
  }

  function checkCursors(field: string, cursors: readonly ConversationCursor[]): void {
    if (cursors.length > CURSORS_PER_CALL) {
      throw new InvalidInputError(`${field}: at most ${CURSORS_PER_CALL} cursors, got ${cursors.length}`);
    }
    for (const [i, c] of cursors.entries()) {
      requireId(`${field}[${i}].conversation_id`, c.conversationId, "conversation");
    }
  }

  return {
    async *subscribe(req, ctx) {
      const p = principal(ctx);
      // Checked before the stream opens, so a bad list is the call's error, not an error frame.
      const max = core.limits.maxPresenceSubscriptions;
      const watched = requireIds("presence_user_ids", req.presenceUserIds, "u", max);
      const session = core.open(p);
      // The session reads frames until its inbound half ends; here it has none beyond the first
      // presence subscription, so it waits until the stream is over.
      const over = new AbortController();
      const end = () => over.abort();
      ctx.signal.addEventListener("abort", end, { once: true });
      const first =
        watched.length === 0
          ? []
          : [
              create(ConnectRequestSchema, {
                frame: { case: "presenceSubscribe", value: { subscribeUserIds: watched } },
              }),
            ];
      session.start(inboundUntil(over.signal, first));
      try {
        for await (const frame of session.outbound.drain()) yield { frame };
      } finally {
        ctx.signal.removeEventListener("abort", end);
        over.abort();
        session.close();
      }
    },
    async ack(req, ctx) {
      const p = principal(ctx);
      checkCursors("delivered", req.delivered);
      checkCursors("read", req.read);
      if (req.delivered.length + req.read.length === 0) {
        throw new InvalidInputError("delivered, read: at least one cursor required");
      }
      await takeFrame(p);
      for (const c of req.delivered) core.cursors.add(p.userId, p.deviceId, c.conversationId, c.seq, 0n);
      for (const c of req.read) core.cursors.add(p.userId, p.deviceId, c.conversationId, c.seq, c.seq);
      // Answered once the sequencer holds the cursors, so a page that reloads after the answer
      // resumes past them (the stream's frames need no such wait: it stays open).
      await core.cursors.flush();
      return {};
    },
    async setTyping(req, ctx) {
      const p = principal(ctx);
      requireId("conversation_id", req.conversationId, "conversation");
      await takeFrame(p);
      await core.sequencer.relayTyping({
        userId: p.userId,
        deviceId: p.deviceId,
        conversationId: req.conversationId,
        active: req.active,
      });
      return {};
    },
  };
}

/** Yields the given frames, then ends once the signal aborts. */
async function* inboundUntil<T>(signal: AbortSignal, frames: T[]): AsyncGenerator<T> {
  yield* frames;
  if (signal.aborted) return;
  await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}
