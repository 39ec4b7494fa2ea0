/**
 * A device's call signalling budgets (docs/calls.md, "Limits"): offers by count, every frame by
 * bytes, and the shape of a frame's ciphertexts; refusals are counted and thrown.
 */
import { type CallFrame, CallMedia, CallSignal } from "../../../gen/switchboard/v1/calls_pb.js";
import { InvalidInputError, LimitError } from "../../common/errors.js";
import { TokenBucket } from "../../common/rate-limit/token-bucket.js";
import { requireId } from "../../common/validate.js";
import { CALL_FRAME_OVERHEAD_BYTES, CALL_LIMITS } from "./limits.js";
import type { CallRelayDeps, CallStream } from "./types.js";

/** A call id: 1 to 64 characters of [A-Za-z0-9_-]. */
export const CALL_ID = /^[A-Za-z0-9_-]{1,64}$/;

export class CallBudgets {
  private readonly offers = new Map<string, TokenBucket>();
  private readonly bytes = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly deps: Pick<CallRelayDeps, "now" | "refused">) {}

  /** The shape of a 1:1 call frame and its payloads; INVALID_ARGUMENT. */
  checkDirect(stream: CallStream, f: CallFrame): void {
    if (!CALL_ID.test(f.callId))
      throw new InvalidInputError("call_id: 1 to 64 characters of [A-Za-z0-9_-] required");
    requireId("peer_user_id", f.peerUserId, "u");
    if (f.peerUserId === stream.userId)
      throw new InvalidInputError("peer_user_id: a call needs another user");
    if (
      f.signal === CallSignal.UNSPECIFIED ||
      f.signal >= CallSignal.ANSWERED_ELSEWHERE ||
      CallSignal[f.signal] === undefined
    )
      throw new InvalidInputError(
        "signal: one of OFFER, ANSWER, ICE_CANDIDATES, RINGING, ACCEPT, DECLINE, BUSY, HANGUP",
      );
    if (f.hostDeviceId !== "") throw new InvalidInputError("host_device_id: only in group calls");
    if (f.signal === CallSignal.OFFER && f.media !== CallMedia.AUDIO && f.media !== CallMedia.VIDEO)
      throw new InvalidInputError("media: an offer is AUDIO or VIDEO");
    this.checkPayloads(stream, f);
  }

  /** At most CALL_LIMITS.payloadsPerFrame ciphertexts, each for a distinct device and within its size. */
  checkPayloads(stream: CallStream, f: CallFrame): void {
    if (f.payloads.length > CALL_LIMITS.payloadsPerFrame)
      throw new InvalidInputError(
        `payloads: at most ${CALL_LIMITS.payloadsPerFrame} per frame, got ${f.payloads.length}`,
      );
    const seen = new Set<string>();
    for (const p of f.payloads) {
      requireId("payloads.device_id", p.deviceId, "dv");
      if (seen.has(p.deviceId)) throw new InvalidInputError(`payloads: device ${p.deviceId} appears twice`);
      seen.add(p.deviceId);
      if (p.ciphertext.length === 0)
        throw new InvalidInputError(`payloads: the ciphertext for ${p.deviceId} is empty`);
      if (p.ciphertext.length > CALL_LIMITS.payloadBytes) {
        this.deps.refused("call_payload_too_large", "call frame refused: a ciphertext passes its limit", {
          deviceId: stream.deviceId,
          bytes: p.ciphertext.length,
        });
        throw new InvalidInputError(
          `payloads: the ciphertext for ${p.deviceId} is ${p.ciphertext.length} bytes; at most ${CALL_LIMITS.payloadBytes}`,
        );
      }
    }
  }

  /** Takes the frame from the device's budgets: offers by count, every frame by bytes. */
  charge(deviceId: string, f: CallFrame, newCall: boolean): void {
    const now = this.deps.now();
    if (newCall) {
      let bucket = this.offers.get(deviceId);
      if (bucket === undefined) {
        bucket = new TokenBucket(CALL_LIMITS.offersPerMinute / 60, CALL_LIMITS.offerBurst, now);
        remember(this.offers, deviceId, bucket);
      }
      const wait = bucket.take(now);
      if (wait > 0) {
        this.deps.refused("call_offer_rate", "call offer refused: the device's offer budget is spent", {
          deviceId,
        });
        throw new LimitError(
          `call offers: at most ${CALL_LIMITS.offersPerMinute} per minute per device (burst ${CALL_LIMITS.offerBurst}; group call joins count as offers); retry in ${wait} ms`,
          { retryAfterMs: wait },
        );
      }
    }
    const cost = CALL_FRAME_OVERHEAD_BYTES + f.payloads.reduce((n, p) => n + p.ciphertext.length, 0);
    const budget = this.bytes.get(deviceId) ?? { tokens: CALL_LIMITS.byteBurst, at: now };
    budget.tokens = Math.min(
      CALL_LIMITS.byteBurst,
      budget.tokens + (Math.max(0, now - budget.at) * CALL_LIMITS.bytesPerSecond) / 1000,
    );
    budget.at = now;
    remember(this.bytes, deviceId, budget);
    if (budget.tokens < cost) {
      const wait = Math.ceil(((cost - budget.tokens) * 1000) / CALL_LIMITS.bytesPerSecond);
      this.deps.refused(
        "call_byte_rate",
        "call frame refused: the device's signalling byte budget is spent",
        {
          deviceId,
          bytes: cost,
        },
      );
      throw new LimitError(
        `call signalling: at most ${CALL_LIMITS.bytesPerSecond} bytes per second per device (burst ${CALL_LIMITS.byteBurst}); retry in ${wait} ms`,
        { retryAfterMs: wait },
      );
    }
    budget.tokens -= cost;
  }
}

/** Sets a key in a map kept within CALL_LIMITS.remembered by dropping its oldest keys. */
export function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  for (const k of map.keys()) {
    if (map.size <= CALL_LIMITS.remembered) return;
    map.delete(k);
  }
}
