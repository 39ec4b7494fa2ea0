import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type AppendItem, AppendItemSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  type Entry,
  EntrySchema,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
} from "../../gen/switchboard/v1/entry_pb.js";

/** A message send: this body (payload, payload type, device ciphertexts) in a conversation. */
export function messageEntry(
  conversationId: string,
  clientMsgId: string,
  body: MessageInitShape<typeof MessageBodySchema>,
): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId,
    conversationId,
    body: { case: "message", value: create(MessageBodySchema, body) },
  });
}

/** What a gateway hands the sequencer for a message with this payload from this sender's device. */
export function messageItem(
  sender: { userId: string; deviceId: string },
  conversationId: string,
  clientMsgId: string,
  payload: Uint8Array,
): AppendItem {
  return create(AppendItemSchema, {
    senderUserId: sender.userId,
    senderDeviceId: sender.deviceId,
    entry: messageEntry(conversationId, clientMsgId, { payload }),
  });
}

/** A committed message entry at `seq` whose client_msg_id and payload are `text`. */
export function committedEntry(conversationId: string, seq: number, text: string): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: BigInt(seq),
    clientMsgId: text,
    body: { case: "message", value: { payload: new TextEncoder().encode(text) } },
  });
}
