import { create } from "@bufbuild/protobuf";
import { type Entry, EntrySchema, type OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import type { SendAckFrame } from "../../gen/switchboard/v1/gateway_pb.js";

/**
 * The log entry of one of this device's sends, as the server stores it and would push it back:
 * the client opens its streams with omit_own_sends (the server does not echo a stream's own sends,
 * a quarter of a 1:1 conversation's frames), so it files its sends itself when send_ack gives
 * their seq. Like the server's copy for this device, it keeps only the device payloads addressed
 * to this device (none: a device does not encrypt to itself), so what the app sees is the same
 * whichever way the entry came. When the log later serves the same seq (a resume, a sync page),
 * the reorder buffer drops it as a duplicate.
 */
export function ownEntry(
  outgoing: OutgoingEntry,
  ack: SendAckFrame,
  userId: string,
  deviceId: string,
): Entry {
  const body = outgoing.body;
  // The bodies a device sends are the log's own types; only the ciphertexts are per device.
  const own =
    body.case === "message" || body.case === "edit" || body.case === "reaction"
      ? ({
          case: body.case,
          value: {
            ...body.value,
            devicePayloads: body.value.devicePayloads.filter((p) => p.deviceId === deviceId),
          },
        } as Entry["body"])
      : (body as Entry["body"]);
  return create(EntrySchema, {
    conversationId: outgoing.conversationId,
    seq: ack.seq,
    senderUserId: userId,
    senderDeviceId: deviceId,
    clientMsgId: outgoing.clientMsgId,
    serverTimeMs: ack.serverTimeMs,
    // So this device deletes its copy of a disappearing send in time, as the others do.
    expiresAtMs: ack.expiresAtMs,
    body: own,
  });
}
