/**
 * The calls whose caller's stream is on this gateway: what the gateway needs to let the first
 * accept through and turn the others away. Bounded per device and in all, and forgotten when
 * the call ends, stops ringing, or outlives CALL_LIMITS.answeredMs.
 */
import type { CallMedia } from "../../../gen/switchboard/v1/calls_pb.js";
import { LimitError } from "../../common/errors.js";
import { CALL_LIMITS } from "./limits.js";

/** One call as its caller's gateway remembers it. */
export interface CallerCall {
  /** The call id. */
  callId: string;
  /** The caller (this gateway's stream's user). */
  callerUserId: string;
  /** The caller's device. */
  callerDeviceId: string;
  /** The callee. */
  peerUserId: string;
  /** Audio or video, as offered. */
  media: CallMedia;
  /** When the offer came, in milliseconds since the Unix epoch. */
  startedAt: number;
  /** When the winning accept came, in milliseconds since the Unix epoch; 0 while ringing. */
  answeredAt: number;
  /** The callee device whose accept won; undefined while ringing. */
  acceptedBy: string | undefined;
  /** When it is forgotten, in milliseconds since the Unix epoch. */
  expiresAt: number;
  /** The callee devices rung by push (no stream when it was offered), to withdraw it from. */
  pushed: string[];
}

export class CallerCalls {
  /** By caller device, then call id. */
  private readonly byDevice = new Map<string, Map<string, CallerCall>>();
  private size = 0;

  /**
   * now is the clock; ended hears of each call the gateway forgets without a hangup (rang out:
   * missed), ringMs after its offer, on a timer of its own.
   */
  constructor(
    private readonly now: () => number,
    private readonly rangOut: (call: CallerCall) => void,
    /** How long a call rings, in milliseconds. */
    private readonly ringMs: number = CALL_LIMITS.ringMs,
  ) {}

  private readonly timers = new Map<CallerCall, NodeJS.Timeout>();

  /** Starts ringing a call (an offer again for the same call id rings on). LIMIT past the bounds. */
  open(call: Pick<CallerCall, "callId" | "callerUserId" | "callerDeviceId" | "peerUserId" | "media">): void {
    const { callerDeviceId: deviceId, callId, peerUserId } = call;
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
    if (known !== undefined) this.forget(known);
    else this.size++;
    const now = this.now();
    const opened: CallerCall = {
      ...call,
      startedAt: now,
      answeredAt: 0,
      acceptedBy: undefined,
      expiresAt: now + this.ringMs,
      pushed: [],
    };
    calls.set(callId, opened);
    this.byDevice.set(deviceId, calls);
    const timer = setTimeout(() => {
      // Looked up as is: by now the call counts as expired, which get() would hide.
      if (this.byDevice.get(deviceId)?.get(callId) !== opened || opened.acceptedBy !== undefined) return;
      this.close(deviceId, callId);
      this.rangOut(opened);
    }, this.ringMs);
    timer.unref();
    this.timers.set(opened, timer);
  }

  /**
   * Keeps a call handed here from the gateway its caller's device left (handoff.ts), ringing out
   * when its ring time from the offer is over. Past the bounds it is not kept (LIMIT).
   */
  adopt(call: CallerCall): void {
    const { callerDeviceId: deviceId, callId } = call;
    const calls = this.live(deviceId);
    const known = calls.get(callId);
    if (known !== undefined) this.forget(known);
    else if (calls.size >= CALL_LIMITS.callsPerDevice || this.size >= CALL_LIMITS.remembered)
      throw new LimitError("calls: no room for a call handed to this gateway");
    else this.size++;
    calls.set(callId, call);
    this.byDevice.set(deviceId, calls);
    if (call.acceptedBy !== undefined) return;
    const timer = setTimeout(
      () => {
        if (this.byDevice.get(deviceId)?.get(callId) !== call || call.acceptedBy !== undefined) return;
        this.close(deviceId, callId);
        this.rangOut(call);
      },
      Math.max(0, call.startedAt + this.ringMs - this.now()),
    );
    timer.unref();
    this.timers.set(call, timer);
  }

  /** The device's calls that have not expired. */
  ofDevice(deviceId: string): CallerCall[] {
    return [...this.live(deviceId).values()];
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
    call.answeredAt = this.now();
    call.expiresAt = call.answeredAt + CALL_LIMITS.answeredMs;
    this.forget(call);
  }

  /** Forgets a call (hung up, declined); returns it as it was, if it was known. */
  close(deviceId: string, callId: string): CallerCall | undefined {
    const calls = this.byDevice.get(deviceId);
    const call = calls?.get(callId);
    if (call !== undefined) {
      calls!.delete(callId);
      this.size--;
      this.forget(call);
    }
    if (calls?.size === 0) this.byDevice.delete(deviceId);
    return call;
  }

  /** Forgets every call and its timer (the gateway is stopping). */
  clear(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    this.byDevice.clear();
    this.size = 0;
  }

  private forget(call: CallerCall): void {
    clearTimeout(this.timers.get(call));
    this.timers.delete(call);
  }

  /** The device's calls with the expired ones dropped. */
  private live(deviceId: string): Map<string, CallerCall> {
    const calls = this.byDevice.get(deviceId) ?? new Map<string, CallerCall>();
    const now = this.now();
    for (const [id, call] of calls) {
      if (call.expiresAt <= now) {
        calls.delete(id);
        this.size--;
        this.forget(call);
      }
    }
    if (calls.size === 0) this.byDevice.delete(deviceId);
    return calls;
  }
}
