import { Code, ConnectError } from "@connectrpc/connect";
import type { DeviceCiphertext, Entry, OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { requireId } from "../common/validate.js";

/** libsignal's registration ids are 14 bits; 0 is never a device's. */
const MAX_REGISTRATION_ID = 0x3fff;

/** What the shape rules of per-device ciphertexts need to know. */
export interface DevicePayloadLimits {
  /** Largest payload, in bytes: all of an entry's ciphertexts together stay within it. */
  maxPayloadBytes: number;
  /** Active devices per user: a direct conversation has at most twice this many devices. */
  maxDevicesPerUser: number;
}

const NONE: readonly DeviceCiphertext[] = [];

/** The per-device ciphertexts of a body (message, edit or reaction); empty for any other. */
export function devicePayloadsOf(body: Entry["body"] | OutgoingEntry["body"]): readonly DeviceCiphertext[] {
  return body.case === "message" || body.case === "edit" || body.case === "reaction"
    ? body.value.devicePayloads
    : NONE;
}

/** The bytes a body carries: its payload, or all of its device ciphertexts. */
export function bodyBytes(body: Entry["body"] | OutgoingEntry["body"]): number {
  if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return 0;
  let bytes = body.value.payload.length;
  for (const p of body.value.devicePayloads) bytes += p.ciphertext.length;
  return bytes;
}

function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/**
 * The shape rules of a body's per-device ciphertexts (whether they match the conversation's
 * devices is the gateway's check): never together with payload; each names a device id, a
 * registration id and a non-empty ciphertext; no device twice; at most every device of two
 * users; all ciphertexts together within the payload limit. A body without them passes.
 */
export function checkDevicePayloads(body: OutgoingEntry["body"], limits: DevicePayloadLimits): void {
  const payloads = devicePayloadsOf(body);
  if (payloads.length === 0) return;
  if (
    (body.case === "message" || body.case === "edit" || body.case === "reaction") &&
    body.value.payload.length > 0
  )
    throw invalid("payload and device_payloads: set one of them, not both");
  const maxDevices = 2 * limits.maxDevicesPerUser;
  if (payloads.length > maxDevices)
    throw invalid(`device_payloads: at most ${maxDevices} ciphertexts, got ${payloads.length}`);
  const seen = new Set<string>();
  let bytes = 0;
  payloads.forEach((p, i) => {
    const field = `device_payloads[${i}]`;
    requireId(`${field}.device_id`, p.deviceId, "dv");
    if (seen.has(p.deviceId)) throw invalid(`${field}.device_id: ${p.deviceId} appears twice`);
    seen.add(p.deviceId);
    if (p.registrationId < 1 || p.registrationId > MAX_REGISTRATION_ID)
      throw invalid(`${field}.registration_id: 1 to ${MAX_REGISTRATION_ID}`);
    if (p.ciphertext.length === 0) throw invalid(`${field}.ciphertext: required`);
    bytes += p.ciphertext.length;
  });
  if (bytes > limits.maxPayloadBytes) {
    throw invalid(
      `device_payloads: the ciphertexts are ${bytes} bytes together; the limit is ${limits.maxPayloadBytes}`,
    );
  }
}
