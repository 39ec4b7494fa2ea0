import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type OutgoingEntry, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { DeviceMismatchSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { Backoff } from "../backoff.js";
import { MAX_MISMATCH_RETRIES } from "../e2ee.js";
import type { SendResult } from "../types.js";
import {
  type BodyOf,
  linkedMessageBody,
  type MessageLinks,
  messageBody,
  newClientMsgId,
  type OutgoingBody,
  payloadBytes,
  sealedContent,
  targetedBody,
} from "./bodies.js";
import { type ClientContext, UNARY_TIMEOUT_MS } from "./context.js";
import type { SendQueue } from "./outbox.js";
import { type Sealer, sealParts } from "./sealing.js";

/**
 * What the app sends: messages, edits, reactions and deletions through the outbox and the stream
 * (encrypted when the client is), and single messages without the stream (GatewayService.Send).
 */
export class Sends {
  constructor(
    private readonly ctx: ClientContext,
    private readonly queue: SendQueue,
    private readonly sealer: Sealer,
  ) {}

  /** A message, with what it tells the server of a reply and mentions (links). */
  send(
    conversationId: string,
    payload: Uint8Array | string,
    clientMsgId?: string,
    links?: MessageLinks,
  ): Promise<SendResult> {
    return this.withPayload(conversationId, payload, clientMsgId, linkedMessageBody(links));
  }

  /** An edit or a reaction: a payload aimed at an earlier entry (one path for both). */
  targeted(
    kind: "edit" | "reaction",
    conversationId: string,
    targetSeq: bigint | number,
    payload: Uint8Array | string,
    clientMsgId?: string,
  ): Promise<SendResult> {
    return this.withPayload(conversationId, payload, clientMsgId, targetedBody(kind, targetSeq));
  }

  /** A deletion for everyone (no payload, never encrypted). */
  deleteForEveryone(
    conversationId: string,
    targetSeq: bigint | number,
    clientMsgId?: string,
  ): Promise<SendResult> {
    return this.queue.enqueue(
      conversationId,
      { case: "delete", value: { targetSeq: BigInt(targetSeq) } },
      clientMsgId,
    );
  }

  private async withPayload(
    conversationId: string,
    payload: Uint8Array | string,
    clientMsgId: string | undefined,
    body: BodyOf,
  ): Promise<SendResult> {
    const plaintext = payloadBytes(payload);
    // An empty reaction removes one: it carries nothing to encrypt.
    if (this.ctx.e2ee !== undefined && plaintext.byteLength > 0) {
      const template = body(new Uint8Array(), [], 0);
      return this.sealer.send(
        conversationId,
        sealedContent(conversationId, template, plaintext, []),
        clientMsgId,
        body,
      );
    }
    const encoded = await this.ctx.codec.encode(conversationId, plaintext);
    const max = this.ctx.limits?.maxPayloadBytes ?? 0;
    if (max > 0 && encoded.byteLength > max) {
      throw new ConnectError(
        `payload of ${encoded.byteLength} bytes exceeds the server's limit of ${max}`,
        Code.InvalidArgument,
      );
    }
    return this.queue.enqueue(conversationId, body(encoded, [], 0), clientMsgId);
  }

  /** One message without the stream; see SwitchboardClient.sendUnary. */
  async unary(
    conversationId: string,
    payload: Uint8Array | string,
    options: { clientMsgId?: string; attempts?: number } & MessageLinks,
  ): Promise<SendResult> {
    const plaintext = payloadBytes(payload);
    const clientMsgId = options.clientMsgId ?? newClientMsgId();
    const body = linkedMessageBody(options);
    if (this.ctx.e2ee === undefined) {
      const entry = create(OutgoingEntrySchema, {
        clientMsgId,
        conversationId,
        body: body(await this.ctx.codec.encode(conversationId, plaintext), [], 0),
      });
      return this.sendEntry(entry, options.attempts);
    }
    const content = sealedContent(conversationId, { case: "message", value: {} }, plaintext, []);
    return this.contentUnary(conversationId, content, clientMsgId, options.attempts, body);
  }

  /**
   * Encrypts a SealedContent and sends it without the stream. A group's member list is read
   * again first: no membership entry reaches a client without a stream, and a removed member
   * must not hold the key of what follows. The device's prekeys are topped up too.
   */
  async contentUnary(
    conversationId: string,
    content: Uint8Array,
    clientMsgId: string,
    attempts?: number,
    body: BodyOf = messageBody,
  ): Promise<SendResult> {
    const e2ee = this.ctx.requireE2ee();
    await e2ee.ensureKeysSoon();
    await e2ee.rememberSent(clientMsgId, content);
    let parts = await sealParts(this.ctx, conversationId, content, true);
    for (let mismatchRetries = 0; ; mismatchRetries++) {
      try {
        let result: SendResult | undefined;
        for (const part of parts) {
          const id = part.keysOnly ? newClientMsgId() : clientMsgId;
          if (part.keysOnly) await e2ee.rememberSent(id, part.content);
          const entry = create(OutgoingEntrySchema, {
            clientMsgId: id,
            conversationId,
            // A keys-only part is no message of the user's: it neither replies nor mentions.
            body: (part.keysOnly ? messageBody : body)(part.payload, part.devicePayloads, part.payloadType),
          });
          result = await this.sendEntry(entry, attempts);
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
        parts = await sealParts(this.ctx, conversationId, content, true);
      }
    }
  }

  /** A body without content (a delete, a pin) sent without the stream, retried like unary. */
  bodyUnary(conversationId: string, body: OutgoingBody, clientMsgId = newClientMsgId()): Promise<SendResult> {
    return this.sendEntry(create(OutgoingEntrySchema, { clientMsgId, conversationId, body }));
  }

  /** GatewayService.Send with retries of transient failures under the same idempotency key. */
  private async sendEntry(entry: OutgoingEntry, attempts = 5): Promise<SendResult> {
    const backoff = new Backoff(this.ctx.tuning.backoffBaseMs, this.ctx.tuning.backoffCapMs);
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await this.ctx.conn.gateway.send({ entry }, { timeoutMs: UNARY_TIMEOUT_MS });
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
}
