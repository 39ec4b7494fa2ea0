import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ContentKind, type SealedContent, SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { DecryptError } from "../crypto/pairwise.js";

// What an encrypted entry's body carries: its payload types, and the SealedContent inside, bound
// to the entry it came in.

/** libsignal's CiphertextMessageType of a sender-key message: MessageBody.payload_type of groups. */
export const SENDER_KEY_PAYLOAD_TYPE = 7;

/** MessageBody.payload_type of a direct message whose content is only in device_payloads. */
export const PAIRWISE_PAYLOAD_TYPE = 2;

/**
 * MessageBody.payload_type of a group send that only hands out our sender key (device_payloads)
 * ahead of the message, when the keys do not fit beside it. Its payload is the plain marker
 * below, not a sender-key ciphertext: a device whose key comes in a later part could not decrypt
 * one, and the marker says nothing the device payloads do not.
 */
export const KEYS_ONLY_PAYLOAD_TYPE = 1;

/** The payload of a keys-only part, and the plaintext it stands for. */
export const KEYS_ONLY_MARKER = toBinary(
  SealedContentSchema,
  create(SealedContentSchema, { keysOnly: true }),
);

/** The ContentKind of an entry's body. */
export function contentKindOf(bodyCase: string | undefined): ContentKind {
  switch (bodyCase) {
    case "message":
      return ContentKind.MESSAGE;
    case "edit":
      return ContentKind.EDIT;
    case "reaction":
      return ContentKind.REACTION;
    default:
      return ContentKind.UNSPECIFIED;
  }
}

/**
 * Refuses content encrypted for another conversation, kind of entry or target than the entry
 * carrying it (a server copying a direct message's ciphertext into a group entry, an edit into a
 * message, one group's message into another): DecryptError "wrong-context".
 */
export function checkContext(content: SealedContent, entry: Entry): void {
  const sender = { userId: entry.senderUserId, deviceId: entry.senderDeviceId };
  const body = entry.body;
  const direct = entry.conversationId.startsWith("d_");
  if (content.conversationId !== entry.conversationId) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content was encrypted for conversation ${content.conversationId || "(none)"}, not ${entry.conversationId}; ` +
        "the server moved it (refused)",
    );
  }
  if (content.kind === ContentKind.CONTROL && direct && body.case === "message") return;
  const kind = contentKindOf(body.case);
  if (content.kind !== kind) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content was encrypted for ${ContentKind[content.kind] ?? content.kind} entries, not a ${body.case} (refused)`,
    );
  }
  const target = body.case === "edit" || body.case === "reaction" ? body.value.targetSeq : 0n;
  if (content.targetSeq !== target) {
    throw new DecryptError(
      sender,
      "wrong-context",
      `the content targets #${content.targetSeq}, not #${target} (refused)`,
    );
  }
}

/** Parses the plaintext of an encrypted entry. */
export function parseSealed(plaintext: Uint8Array): SealedContent {
  try {
    return fromBinary(SealedContentSchema, plaintext);
  } catch (err) {
    throw new Error("the decrypted content is not a SealedContent message", { cause: err });
  }
}
