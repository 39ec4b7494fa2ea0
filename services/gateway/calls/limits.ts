/**
 * Bounds on call signalling, per device (docs/calls.md, "Limits"). Call frames also count against
 * the stream's frame budget like every frame; these bound what one device can make the server
 * relay, in counts and in bytes, so a flood of offers or oversized SDP costs its sender only.
 */
export const CALL_LIMITS = {
  /** Largest ciphertext for one device, in bytes (an SDP offer with video is a few KiB). */
  payloadBytes: 16_384,
  /** Per-device ciphertexts in one frame (the callee's devices, at most). */
  payloadsPerFrame: 16,
  /** Sustained offers (new calls) per device, per minute. */
  offersPerMinute: 10,
  /** Offers a device may make in a burst. */
  offerBurst: 5,
  /** Sustained call signalling per device, in bytes per second (ciphertexts plus 64 per frame). */
  bytesPerSecond: 64 * 1024,
  /** Call signalling a device may send in a burst, in bytes: two frames of the largest size. */
  byteBurst: 2 * (16 * 16_384 + 64),
  /** Calls a device may have ringing or going at once as the caller (on its gateway). */
  callsPerDevice: 4,
  /** How long a call rings before the gateway forgets it, in milliseconds. */
  ringMs: 2 * 60_000,
  /**
   * When a callee device's gateway ends a ring itself, in ms after the offer: only if the
   * caller's gateway (which rings out at ringMs) said nothing, as when it died.
   */
  ringEndMs: 2 * 60_000 + 10_000,
  /** How long an answered call is remembered without a hangup, in milliseconds. */
  answeredMs: 12 * 3600_000,
  /** Calls, devices' budgets and membership checks a gateway remembers at most (each map). */
  remembered: 100_000,
  /** How long a checked pair of users is trusted to share a direct conversation, in milliseconds. */
  pairCheckMs: 30_000,
  /** Devices in one group call at once (a mesh of 32 is 496 peer connections in all). */
  groupParticipants: 32,
  /** Devices a group call's log entry lists (every device that joined, up to this many). */
  groupLogParticipants: 128,
  /** Members of a group whose devices without a stream are rung by push, per call. */
  groupPushMembers: 256,
  /** Group conversations whose member lists a gateway remembers for call checks. */
  groupMemberLists: 1_000,
  /**
   * How often the host's gateway looks for participants whose stream is gone (no route) and
   * lets them out, in milliseconds: a device that drops off without LEAVE.
   */
  groupSweepMs: 10_000,
  /**
   * How long a device in a call whose last stream closed has to come back (to this gateway or
   * another) before its calls are ended for it, or a group call it hosts handed on, in ms.
   */
  dropGraceMs: 5_000,
  /**
   * How long a gateway waits for a call handed to it before it answers a JOIN or LEAVE for a
   * call it does not know, when the host device's stream here is younger than the grace and
   * this, in milliseconds (the state may be on its way from the gateway the device left).
   */
  handoffWaitMs: 3_000,
  /** JOINs and LEAVEs waiting for their call to be handed here, at most. */
  handoffWaiting: 1_024,
  /** Member ids in those lists together (about 40 bytes each: a few MiB at most). */
  groupMemberIds: 100_000,
} as const;

/** What a frame costs in the byte budget beyond its ciphertexts (ids and framing). */
export const CALL_FRAME_OVERHEAD_BYTES = 64;
