import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import type { CheckedMember } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { DeviceCiphertext, Entry, OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type DeviceMismatch,
  DeviceMismatchSchema,
  type MismatchedDevice,
  MismatchedDeviceSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { ConflictError, DomainError, InvalidInputError } from "../common/errors.js";
import { requireId } from "../common/validate.js";

/** libsignal's registration ids are 14 bits; 0 is never a device's. */
const MAX_REGISTRATION_ID = 0x3fff;

/** What the shape rules of per-device ciphertexts need to know. */
export interface DevicePayloadLimits {
  /** Largest payload, in bytes: an entry's payload and all of its ciphertexts together stay within it. */
  maxPayloadBytes: number;
  /** Active devices per user: a direct conversation has at most twice this many devices. */
  maxDevicesPerUser: number;
  /** Members per group: a group has at most this many times maxDevicesPerUser devices. */
  maxGroupSize: number;
}

/** Which rules a conversation's device payloads follow. */
export type ConversationKind = "direct" | "group";

/**
 * The kind of a conversation, from its id: direct ids are derived ("d_", ids.ts) and group ids
 * are minted with "g_", so the kind is known before the conversation is loaded.
 */
export function conversationKind(conversationId: string): ConversationKind {
  return conversationId.startsWith("d_") ? "direct" : "group";
}

const NONE: readonly DeviceCiphertext[] = [];

/** The per-device ciphertexts of a body (message, edit or reaction); empty for any other. */
export function devicePayloadsOf(body: Entry["body"] | OutgoingEntry["body"]): readonly DeviceCiphertext[] {
  return body.case === "message" || body.case === "edit" || body.case === "reaction"
    ? body.value.devicePayloads
    : NONE;
}

/** MessageBody.payload_type of a direct message whose content is only in device_payloads. */
export const PAIRWISE_PAYLOAD_TYPE = 2;
/** libsignal's CiphertextMessageType SenderKey: a payload encrypted once with a sender key. */
export const SENDER_KEY_PAYLOAD_TYPE = 7;

/**
 * Whether a body's device set must be checked: it has per-device ciphertexts, or its
 * payload_type says it is end-to-end encrypted for the conversation's devices (pairwise in a
 * direct conversation, a sender key in a group). The latter with no ciphertexts at all is a
 * sender who believes no other device holds keys; checking it tells them of the devices that
 * do, which would otherwise get a message they cannot read.
 */
export function needsDeviceCheck(conversationId: string, body: OutgoingEntry["body"]): boolean {
  if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return false;
  if (body.value.devicePayloads.length > 0) return true;
  const encryptedAs =
    conversationKind(conversationId) === "direct" ? PAIRWISE_PAYLOAD_TYPE : SENDER_KEY_PAYLOAD_TYPE;
  return body.value.payloadType === encryptedAs;
}

/** The bytes a body carries: its payload and all of its device ciphertexts. */
export function bodyBytes(body: Entry["body"] | OutgoingEntry["body"]): number {
  if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return 0;
  let bytes = body.value.payload.length;
  for (const p of body.value.devicePayloads) bytes += p.ciphertext.length;
  return bytes;
}

/** The refusal of a malformed set: INVALID_ARGUMENT at the boundary (and in the gateway's frames). */
function invalid(message: string): InvalidInputError {
  return new InvalidInputError(message);
}

/**
 * The shape rules of a body's per-device ciphertexts (whether they match the conversation's
 * devices is the gateway's check). A body without them passes. In both kinds each names a
 * device id and a registration id, and no device appears twice.
 *
 * - direct: never together with payload; every ciphertext non-empty; at most every device of
 *   two users; all ciphertexts together within the payload limit.
 * - group: payload (the sender-key ciphertext) is required, and the ciphertexts only hand out
 *   the sender key; at most every device of a full group; payload and ciphertexts together
 *   within the payload limit. An empty ciphertext stands for a device that already holds the
 *   sender key, which only the gateway sees (`keyHolders`): it drops them before the log, so
 *   the sequencer refuses them.
 */
export function checkDevicePayloads(
  body: OutgoingEntry["body"],
  kind: ConversationKind,
  limits: DevicePayloadLimits,
  keyHolders = false,
): void {
  const payloads = devicePayloadsOf(body);
  if (payloads.length === 0) return;
  const payload =
    body.case === "message" || body.case === "edit" || body.case === "reaction"
      ? body.value.payload
      : new Uint8Array(0);
  if (kind === "direct" && payload.length > 0)
    throw invalid("payload and device_payloads: set one of them, not both, in a direct conversation");
  if (kind === "group" && payload.length === 0) {
    throw invalid(
      "payload: required with device_payloads in a group (the content encrypted once with the " +
        "sender key; device_payloads only hand out the sender key)",
    );
  }
  const maxDevices =
    kind === "direct" ? 2 * limits.maxDevicesPerUser : limits.maxGroupSize * limits.maxDevicesPerUser;
  if (payloads.length > maxDevices)
    throw invalid(
      `device_payloads: at most ${maxDevices} devices in a ${kind} conversation, got ${payloads.length}`,
    );
  const emptyAllowed = kind === "group" && keyHolders;
  const seen = new Set<string>();
  let bytes = payload.length;
  payloads.forEach((p, i) => {
    const field = `device_payloads[${i}]`;
    requireId(`${field}.device_id`, p.deviceId, "dv");
    if (seen.has(p.deviceId)) throw invalid(`${field}.device_id: ${p.deviceId} appears twice`);
    seen.add(p.deviceId);
    if (p.registrationId < 1 || p.registrationId > MAX_REGISTRATION_ID)
      throw invalid(`${field}.registration_id: 1 to ${MAX_REGISTRATION_ID}`);
    if (p.ciphertext.length === 0 && !emptyAllowed) throw invalid(`${field}.ciphertext: required`);
    bytes += p.ciphertext.length;
  });
  if (bytes > limits.maxPayloadBytes) {
    throw invalid(
      kind === "direct"
        ? `device_payloads: the ciphertexts are ${bytes} bytes together; the limit is ${limits.maxPayloadBytes}`
        : `payload and device_payloads: ${bytes} bytes together; the limit is ${limits.maxPayloadBytes}`,
    );
  }
}

/**
 * The refusal of a mismatched send: FAILED_PRECONDITION naming the devices, with the lists as
 * a DeviceMismatch error detail (the stream copies it into SendErrorFrame.mismatch). `why`
 * replaces the opening of the message when the cause is not the device lists alone.
 */
export function mismatchError(
  mismatch: DeviceMismatch,
  why = "device_payloads do not match the conversation's devices",
): ConflictError {
  const named = (list: MismatchedDevice[]) =>
    list.map((d) => (d.userId === "" ? d.deviceId : `${d.deviceId} (${d.userId})`)).join(", ");
  const parts: string[] = [];
  if (mismatch.missing.length > 0) parts.push(`missing ${named(mismatch.missing)}`);
  if (mismatch.extra.length > 0) parts.push(`extra ${named(mismatch.extra)}`);
  if (mismatch.stale.length > 0) parts.push(`stale ${named(mismatch.stale)}`);
  return new ConflictError(
    `${why}${parts.length > 0 ? `: ${parts.join("; ")}` : ""}. ` +
      "Add the missing, drop the extra, re-key the stale, and retry with the same client_msg_id",
    { details: [{ desc: DeviceMismatchSchema, value: mismatch }] },
  );
}

/** The DeviceMismatch a refusal carries (on the wire, or as the domain error before it), if any. */
export function mismatchOf(error: ConnectError | DomainError): DeviceMismatch | undefined {
  if (error instanceof DomainError) {
    if (error.kind !== "conflict") return undefined;
    const detail = error.details.find((d) => d.desc.typeName === DeviceMismatchSchema.typeName);
    return detail?.value as DeviceMismatch | undefined;
  }
  return error.code === Code.FailedPrecondition ? error.findDetails(DeviceMismatchSchema)[0] : undefined;
}

/**
 * The shard's check of a group send against the members at the seq it is about to assign: the
 * gateway checked the send's devices against `checked` (a member list that may be seconds old),
 * so the send stands only if those are exactly the current members. Undefined when they are;
 * otherwise the refusal, whose DeviceMismatch lists as extra every device the send addresses of
 * a member removed since (key holders included, so the sender rotates its key). Members added
 * since have no device list here (the shard does not know devices); they are named in the
 * message, and any mismatch makes the sender read the members again.
 */
export function membershipRefusal(
  checked: readonly CheckedMember[],
  current: ReadonlyMap<string, unknown>,
): ConflictError | undefined {
  const seen = new Set<string>();
  const removed: string[] = [];
  const extra: MismatchedDevice[] = [];
  for (const m of checked) {
    seen.add(m.userId);
    if (current.has(m.userId)) continue;
    removed.push(m.userId);
    // user_id stays empty for extra devices, as the protocol says of every extra device.
    for (const deviceId of m.deviceIds) extra.push(create(MismatchedDeviceSchema, { deviceId }));
  }
  const added = [...current.keys()].filter((userId) => !seen.has(userId));
  if (removed.length === 0 && added.length === 0) return undefined;
  const changes: string[] = [];
  if (removed.length > 0) changes.push(`removed ${removed.sort().join(", ")}`);
  if (added.length > 0) changes.push(`added ${added.sort().join(", ")}`);
  extra.sort((a, b) => (a.deviceId < b.deviceId ? -1 : 1));
  return mismatchError(
    create(DeviceMismatchSchema, { missing: [], extra, stale: [] }),
    `the group's members changed before this send was ordered (${changes.join("; ")}); read the members again`,
  );
}
