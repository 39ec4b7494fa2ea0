import { create } from "@bufbuild/protobuf";
import { type RetryRequest, RetryRequestSchema } from "../../gen/switchboard/v1/content_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { type GroupCipher, GroupDecryptError } from "../crypto/groups.js";
import { DecryptError } from "../crypto/pairwise.js";
import type { DeviceRef } from "../crypto/stores.js";
import { KEYS_ONLY_PAYLOAD_TYPE, SENDER_KEY_PAYLOAD_TYPE } from "./content.js";
import type { Recipients } from "./recipients.js";

/**
 * How often this device asks one sending device, per group, to hand its sender key over again
 * after a failure, and how often it answers one requesting device per group: a corrupted or
 * withheld key distribution heals at the cost of at most one pairwise message per minute and pair.
 */
export const RETRY_INTERVAL_MS = 60_000;
/** Pairs (device, group) remembered for RETRY_INTERVAL_MS; the oldest are forgotten beyond. */
const RETRY_MEMORY = 10_000;

/** Retry requests: a sender key that did not arrive is asked for again, and handed over again when asked. */
export class RetryRequests {
  /** `<sender device>|<group>` => when this device last asked that device to resend its key. */
  private readonly retriesAsked = new Map<string, number>();
  /** `<requesting device>|<group>` => when this device last answered such a request. */
  private readonly retriesAnswered = new Map<string, number>();

  constructor(
    private readonly self: DeviceRef,
    private readonly recipients: Recipients,
    private readonly groups: GroupCipher,
  ) {}

  /**
   * After a group entry failed to decrypt: the retry request to send to its sending device (over
   * the direct conversation with its user), or undefined when none is due. Asked when our copy
   * of the sender's key was corrupted or never came (no key for the message); at most once per
   * sending device and group every RETRY_INTERVAL_MS. Not for this user's own devices (there is
   * no direct conversation with oneself).
   */
  retryFor(entry: Entry, err: Error): RetryRequest | undefined {
    const body = entry.body;
    if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return undefined;
    if (
      body.value.payloadType !== SENDER_KEY_PAYLOAD_TYPE &&
      body.value.payloadType !== KEYS_ONLY_PAYLOAD_TYPE
    )
      return undefined;
    if (entry.senderUserId === this.self.userId || entry.senderDeviceId === "") return undefined;
    const keyMissing = err instanceof GroupDecryptError && err.reason === "no-key";
    const keyBroken =
      err instanceof DecryptError && (err.reason === "invalid" || err.reason === "no-session");
    if (!keyMissing && !keyBroken) return undefined;
    if (!rateLimited(this.retriesAsked, `${entry.senderDeviceId}|${entry.conversationId}`)) return undefined;
    return create(RetryRequestSchema, {
      conversationId: entry.conversationId,
      seq: entry.seq,
      deviceId: entry.senderDeviceId,
    });
  }

  /**
   * A retry request from another device (authenticated by the pairwise session it came in):
   * when it names this device and the requester is a recipient of the group, the requester is
   * marked as lacking our current sender key, so the next group send (or sealKeysOnly) hands it
   * over again. True when honoured; at most once per requesting device and group every
   * RETRY_INTERVAL_MS.
   */
  async retryRequested(requester: DeviceRef, request: RetryRequest): Promise<boolean> {
    if (request.deviceId !== this.self.deviceId || !request.conversationId.startsWith("g_")) return false;
    const key = `${requester.deviceId}|${request.conversationId}`;
    if (!rateLimited(this.retriesAnswered, key)) return false;
    this.recipients.forgetMembers(request.conversationId);
    const recipients = await this.recipients.groupRecipients(request.conversationId);
    const device = recipients.find((d) => d.userId === requester.userId && d.deviceId === requester.deviceId);
    if (device === undefined) return false;
    await this.groups.forgetDevicesIn(request.conversationId, [device]);
    return true;
  }
}

/** Remembers a (device, group) pair for RETRY_INTERVAL_MS; false when it was already there. */
function rateLimited(memory: Map<string, number>, key: string): boolean {
  const now = Date.now();
  const last = memory.get(key);
  if (last !== undefined && now - last < RETRY_INTERVAL_MS) return false;
  memory.delete(key);
  memory.set(key, now);
  while (memory.size > RETRY_MEMORY) {
    const oldest = memory.keys().next().value;
    if (oldest === undefined) break;
    memory.delete(oldest);
  }
  return true;
}
