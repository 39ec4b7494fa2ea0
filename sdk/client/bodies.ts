import { randomBytes } from "node:crypto";
import { clone, create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { type AttachmentPointer, SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import {
  type DeviceCiphertext,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { contentKindOf, type SealedPart } from "../e2ee.js";

// The bodies of what a client sends, and how a send is kept in the outbox.

/** The body of an outgoing entry (message, edit, reaction, delete). */
export type OutgoingBody = NonNullable<MessageInitShape<typeof OutgoingEntrySchema>["body"]>;
/** Builds a send's body from its payload, its per-device ciphertexts and the payload's type. */
export type BodyOf = (
  payload: Uint8Array,
  devicePayloads: DeviceCiphertext[],
  payloadType: number,
) => OutgoingBody;

const textEncoder = new TextEncoder();

/** A new idempotency key: 22 characters of [A-Za-z0-9_-]. */
export function newClientMsgId(): string {
  return randomBytes(16).toString("base64url");
}

/** An app's payload as bytes (strings as UTF-8). */
export function payloadBytes(payload: Uint8Array | string): Uint8Array {
  return typeof payload === "string" ? textEncoder.encode(payload) : payload;
}

/** A message body with the given payload, per-device ciphertexts and payload type. */
export const messageBody: BodyOf = (payload, devicePayloads, payloadType) => ({
  case: "message",
  value: { payload, devicePayloads, payloadType },
});

/**
 * What a message tells the server in clear besides its content (docs/protocol.md): the entry it
 * replies to, and users to wake through a mute. Keep a mention in the content alone by not naming
 * it here; the server then learns nothing of it.
 */
export interface MessageLinks {
  /** The seq of the entry this message replies to. */
  replyTo?: bigint | number | undefined;
  /** Users (ids) this message mentions and who should be woken even if they muted it. */
  mentions?: readonly string[] | undefined;
}

/** The body of a message with its links (messageBody when there are none). */
export function linkedMessageBody(links: MessageLinks | undefined): BodyOf {
  if (links === undefined || (links.replyTo === undefined && (links.mentions?.length ?? 0) === 0)) {
    return messageBody;
  }
  const replyToSeq = BigInt(links.replyTo ?? 0);
  const mentionedUserIds = [...(links.mentions ?? [])];
  return (payload, devicePayloads, payloadType) => ({
    case: "message",
    value: { payload, devicePayloads, payloadType, replyToSeq, mentionedUserIds },
  });
}

/** The body of an edit or a reaction: a payload that targets an earlier entry. */
export function targetedBody(kind: "edit" | "reaction", targetSeq: bigint | number): BodyOf {
  return (payload, devicePayloads, payloadType) => ({
    case: kind,
    value: { targetSeq: BigInt(targetSeq), payload, devicePayloads, payloadType },
  });
}

/** How a send is kept in the outbox: its OutgoingEntry in base64. */
export function outboxEncoding(outgoing: OutgoingEntry): string {
  return Buffer.from(toBinary(OutgoingEntrySchema, outgoing)).toString("base64");
}

/** A copy of a send with the payload and device ciphertexts of a sealed part in its body. */
export function withCiphertexts(outgoing: OutgoingEntry, part: SealedPart): OutgoingEntry {
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

/**
 * The plaintext of an end-to-end encrypted message, edit or reaction, bound to its conversation,
 * its kind of entry and its target (checked by the recipient: checkContext).
 */
export function sealedContent(
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
