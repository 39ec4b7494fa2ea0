import { create, toBinary } from "@bufbuild/protobuf";
import {
  type AttachmentPointer,
  ContentKind,
  type HistoryTransfer,
  type RetryRequest,
  SealedContentSchema,
} from "../../gen/switchboard/v1/content_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { DecryptError } from "../crypto/pairwise.js";
import {
  checkContext,
  KEYS_ONLY_PAYLOAD_TYPE,
  PAIRWISE_PAYLOAD_TYPE,
  parseSealed,
  SENDER_KEY_PAYLOAD_TYPE,
} from "../e2ee.js";
import type { IncomingEntry } from "../types.js";
import { newClientMsgId } from "./bodies.js";
import type { ClientContext } from "./context.js";
import type { Sealer } from "./sealing.js";

/** The payload types whose content is end-to-end encrypted (sdk/e2ee.ts). */
const ENCRYPTED_PAYLOAD_TYPES = new Set([
  PAIRWISE_PAYLOAD_TYPE,
  KEYS_ONLY_PAYLOAD_TYPE,
  SENDER_KEY_PAYLOAD_TYPE,
]);

/** What decoding needs of the rest of the client. */
export interface DecoderDeps {
  /** The direct conversation with a user (retry requests go there). */
  openDirect(peerUserId: string): Promise<{ conversationId: string }>;
  /** Sends an encrypted content without the stream (Sends.contentUnary). */
  sendContentUnary(
    conversationId: string,
    content: Uint8Array,
    clientMsgId: string,
    attempts: number,
  ): Promise<unknown>;
  /** True while a stream is up. */
  connected(): boolean;
  /** A history transfer arrived (history.ts imports it if it is for this device). */
  historyOffered(raw: Entry, transfer: HistoryTransfer): void;
}

/**
 * Turns log entries into what the app sees: decrypted (or decoded by the codec), bound to their
 * context, refused when a server stripped the encryption. Sender-key retry requests are answered
 * and asked for here, as control messages the app never sees.
 */
export class EntryDecoder {
  /** Retry requests on their way (awaited by getHistory and close, so a command does not cut them off). */
  private readonly retrySends = new Set<Promise<void>>();

  constructor(
    private readonly ctx: ClientContext,
    private readonly sealer: Sealer,
    private readonly deps: DecoderDeps,
  ) {}

  /** Resolves when the retry requests sent so far have gone out (or failed). */
  async retriesSettled(): Promise<void> {
    await Promise.allSettled([...this.retrySends]);
  }

  /** Turns a log entry into what the app sees, decoding its payload. */
  async toIncoming(raw: Entry): Promise<IncomingEntry> {
    const body = raw.body;
    const e2ee = this.ctx.e2ee;
    // Gone on the server: whatever this device kept of it goes too (it may have expired while
    // the device was away, before the local sweep reached it).
    if (raw.expired && e2ee !== undefined) await e2ee.forgetEntry(raw.conversationId, raw.seq);
    let payload: Uint8Array | undefined;
    let decodeError: Error | undefined;
    let targetSeq: bigint | undefined;
    const hasPayload = body.case === "message" || body.case === "edit" || body.case === "reaction";
    if (body.case === "edit" || body.case === "delete" || body.case === "reaction" || body.case === "pin")
      targetSeq = body.value.targetSeq;
    let attachments: AttachmentPointer[] = [];
    let keysOnly = false;
    let encryptedContent = false;
    if (body.case === "membership" && e2ee !== undefined) {
      try {
        await e2ee.membershipChanged(raw);
      } catch (err) {
        this.ctx.events.reportError(err);
      }
    }
    if (hasPayload && !raw.redacted) {
      try {
        const ownEncrypted =
          e2ee !== undefined &&
          raw.senderDeviceId === this.ctx.deviceId &&
          body.value.payload.length === 0 &&
          e2ee.hasSent(raw.clientMsgId);
        const encrypted =
          body.value.devicePayloads.length > 0 || ENCRYPTED_PAYLOAD_TYPES.has(body.value.payloadType);
        if (e2ee !== undefined && (encrypted || ownEncrypted)) {
          const fresh = !e2ee.hasDecoded(raw);
          // Written to the profile before this resolves, so before the entry is acked.
          const content = parseSealed(await e2ee.decode(raw));
          // A keys-only part is a plain marker: it carries nothing to bind.
          if (!content.keysOnly) checkContext(content, raw);
          if (content.profileKey.length > 0 && raw.senderDeviceId !== this.ctx.deviceId)
            await this.ctx.profileKeys.received(raw.senderUserId, raw.senderDeviceId, content.profileKey);
          payload = content.payload;
          attachments = content.attachments;
          keysOnly = content.keysOnly;
          encryptedContent = true;
          if (content.retryRequest !== undefined) {
            // A control message: nothing for the app.
            keysOnly = true;
            payload = undefined;
            if (fresh && raw.senderDeviceId !== this.ctx.deviceId)
              await this.retryRequested(raw, content.retryRequest);
          }
          if (content.historyTransfer !== undefined) {
            // Another device's history for this one (or for a sibling): nothing for the app.
            keysOnly = true;
            payload = undefined;
            if (raw.senderDeviceId !== this.ctx.deviceId)
              this.deps.historyOffered(raw, content.historyTransfer);
          }
        } else if (encrypted) {
          throw new Error("the entry is end-to-end encrypted and this client was opened without encryption");
        } else if (
          e2ee !== undefined &&
          !this.ctx.acceptUnencrypted &&
          body.value.payload.length > 0 &&
          // An encrypted device sends nothing in plaintext (but empty reactions): plaintext under
          // its own name is a server's (or from before the profile turned encryption on).
          (raw.senderDeviceId === this.ctx.deviceId || e2ee.encryptsWith(raw.senderUserId))
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
          payload = await this.ctx.codec.decode(raw);
        }
      } catch (err) {
        decodeError = err instanceof Error ? err : new Error(String(err));
        const retry = e2ee?.retryFor(raw, decodeError);
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
      kind: raw.expired ? "expired" : (body.case ?? "unknown"),
      payload,
      attachments,
      keysOnly,
      encrypted: encryptedContent,
      targetSeq,
      replyTo: body.case === "message" && body.value.replyToSeq > 0n ? body.value.replyToSeq : undefined,
      mentions: body.case === "message" ? [...body.value.mentionedUserIds] : [],
      membership: body.case === "membership" ? body.value : undefined,
      call: body.case === "call" ? body.value : undefined,
      ...(body.case === "pin" && { unpin: body.value.unpin }),
      redacted: raw.redacted,
      ...(raw.expiresAtMs > 0n && { expiresAtMs: raw.expiresAtMs }),
      ...(body.case === "disappearing" && { disappearing: body.value }),
      decodeError,
      fromThisDevice: raw.senderDeviceId !== "" && raw.senderDeviceId === this.ctx.deviceId,
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
      const { conversationId } = await this.deps.openDirect(peerUserId);
      const content = toBinary(
        SealedContentSchema,
        create(SealedContentSchema, { conversationId, kind: ContentKind.CONTROL, retryRequest: request }),
      );
      await this.deps.sendContentUnary(conversationId, content, newClientMsgId(), 3);
    };
    const sending: Promise<void> = run()
      .catch((err: unknown) => this.ctx.backgroundFailed(err))
      .finally(() => this.retrySends.delete(sending));
    this.retrySends.add(sending);
  }

  /**
   * A device asked this one for its sender key of a group again: it is marked as lacking it, and
   * with a stream up the key goes out at once in a keys-only send (otherwise with the next send).
   */
  private async retryRequested(raw: Entry, request: RetryRequest): Promise<void> {
    const e2ee = this.ctx.requireE2ee();
    try {
      const requester = { userId: raw.senderUserId, deviceId: raw.senderDeviceId };
      if (!(await e2ee.retryRequested(requester, request))) return;
      if (!this.deps.connected()) return;
      this.sealer.onChain(async () => {
        const max = this.ctx.maxPayloadBytes();
        for (const part of await e2ee.sealKeysOnly(request.conversationId, max)) {
          await this.sealer.queueKeysOnly(request.conversationId, part);
        }
      });
    } catch (err) {
      this.ctx.backgroundFailed(err);
    }
  }
}
