/**
 * The calls whose caller's stream is on this gateway: what the gateway needs to let the first
 * accept through and turn the others away. Bounded per device and in all, and forgotten when
 * the call ends, stops ringing, or outlives CALL_LIMITS.answeredMs.
 */
import { LimitError } from "../../common/errors.js";
import { CALL_LIMITS } from "./limits.js";

/** One call as its caller's gateway remembers it. */
export interface CallerCall {
  /** The callee. */
  peerUserId: string;
  /** The callee device whose accept won; undefined while ringing. */
  acceptedBy: string | undefined;
  /** When it is forgotten, in milliseconds since the Unix epoch. */
  expiresAt: number;
}

export class CallerCalls {
  /** By caller device, then call id. */
  private readonly byDevice = new Map<string, Map<string, CallerCall>>();
  private size = 0;

  constructor(private readonly now: () => number) {}

  /** Starts ringing a call (an offer again for the same call id rings on). LIMIT past the bounds. */
  open(deviceId: string, callId: string, peerUserId: string): void {
    const calls = this.live(deviceId);
    const known = calls.get(callId);
    if (known !== undefined && known.peerUserId === peerUserId) return;
    if (known === undefined && calls.size >= CALL_LIMITS.callsPerDevice)
      throw new LimitError(
        `calls: at most ${CALL_LIMITS.callsPerDevice} ringing or going at once per device; hang one up first`,
      );
    if (known === undefined && this.size >= CALL_LIMITS.remembered)
      throw new LimitError("calls: this gateway is at its limit of calls; retry in a minute", {
        retryAfterMs: 60_000,
      });
    if (known === undefined) this.size++;
    calls.set(callId, { peerUserId, acceptedBy: undefined, expiresAt: this.now() + CALL_LIMITS.ringMs });
    this.byDevice.set(deviceId, calls);
  }

  /** The call, unless it expired. */
  get(deviceId: string, callId: string): CallerCall | undefined {
    return this.live(deviceId).get(callId);
  }

  /** Records the winning accept: the call is remembered as going from now on. */
  accept(deviceId: string, callId: string, calleeDeviceId: string): void {
    const call = this.get(deviceId, callId);
    if (call === undefined) return;
    call.acceptedBy = calleeDeviceId;
    call.expiresAt = this.now() + CALL_LIMITS.answeredMs;
  }

  /** Forgets a call (hung up). */
  close(deviceId: string, callId: string): void {
    const calls = this.byDevice.get(deviceId);
    if (calls?.delete(callId)) this.size--;
    if (calls?.size === 0) this.byDevice.delete(deviceId);
  }

  /** The device's calls with the expired ones dropped. */
  private live(deviceId: string): Map<string, CallerCall> {
    const calls = this.byDevice.get(deviceId) ?? new Map<string, CallerCall>();
    const now = this.now();
    for (const [id, call] of calls) {
      if (call.expiresAt <= now) {
        calls.delete(id);
        this.size--;
      }
    }
    if (calls.size === 0) this.byDevice.delete(deviceId);
    return calls;
  }
}
