/**
 * Devices that drop off mid-call (docs/calls.md, "Devices that drop off"): when the last stream
 * of a device in a call closes on this gateway, the device has CALL_LIMITS.dropGraceMs to come
 * back (here, or on another gateway: then its calls are handed there) before the gateway ends
 * its calls for it, so the other side is told at once rather than by ICE's 30 s timeout.
 */
import { CALL_LIMITS } from "./limits.js";

/** A device gone from this gateway, heard of once its grace is over. */
export type GoneHandler = (userId: string, deviceId: string, droppedAt: number) => void;

/** The grace timers of devices whose last stream here closed while they were in a call. */
export class DropWatch {
  private readonly pending = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly now: () => number,
    private readonly gone: GoneHandler,
    private readonly graceMs: number = CALL_LIMITS.dropGraceMs,
  ) {}

  /** Starts the device's grace (the first drop counts: a timer already running stays). */
  closed(userId: string, deviceId: string): void {
    if (this.pending.has(deviceId)) return;
    const droppedAt = this.now();
    // Bounded like the calls themselves: past the bound the device is judged at once.
    if (this.pending.size >= CALL_LIMITS.remembered) {
      this.gone(userId, deviceId, droppedAt);
      return;
    }
    const timer = setTimeout(() => {
      this.pending.delete(deviceId);
      this.gone(userId, deviceId, droppedAt);
    }, this.graceMs);
    timer.unref();
    this.pending.set(deviceId, timer);
  }

  stop(): void {
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }
}

/** A 1:1 call a device on this gateway accepted (its accept may have lost the race). */
export interface CalleeCall {
  callId: string;
  /** The caller, to hang up on for the device if it drops off. */
  callerUserId: string;
  /** When it was accepted, in milliseconds since the Unix epoch. */
  acceptedAt: number;
}

/**
 * The calls the devices here took as callee: the caller's gateway holds the call, so only this
 * gateway sees the callee's stream go. Forgotten on a hangup either way, a decline, a lost race,
 * or after CALL_LIMITS.answeredMs; bounded per device and in all.
 */
export class CalleeCalls {
  private readonly byDevice = new Map<string, Map<string, CalleeCall>>();
  private size = 0;

  constructor(private readonly now: () => number) {}

  add(deviceId: string, call: CalleeCall): void {
    const calls = this.live(deviceId);
    if (!calls.has(call.callId)) {
      if (calls.size >= CALL_LIMITS.callsPerDevice || this.size >= CALL_LIMITS.remembered) return;
      this.size++;
    }
    calls.set(call.callId, call);
    this.byDevice.set(deviceId, calls);
  }

  remove(deviceId: string, callId: string): void {
    const calls = this.byDevice.get(deviceId);
    if (calls?.delete(callId)) this.size--;
    if (calls?.size === 0) this.byDevice.delete(deviceId);
  }

  has(deviceId: string): boolean {
    return this.live(deviceId).size > 0;
  }

  hasCall(deviceId: string, callId: string): boolean {
    return this.live(deviceId).has(callId);
  }

  /** The device's calls, forgotten here. */
  take(deviceId: string): CalleeCall[] {
    const calls = [...this.live(deviceId).values()];
    this.size -= calls.length;
    this.byDevice.delete(deviceId);
    return calls;
  }

  clear(): void {
    this.byDevice.clear();
    this.size = 0;
  }

  private live(deviceId: string): Map<string, CalleeCall> {
    const calls = this.byDevice.get(deviceId) ?? new Map<string, CalleeCall>();
    const oldest = this.now() - CALL_LIMITS.answeredMs;
    for (const [id, c] of calls)
      if (c.acceptedAt <= oldest) {
        calls.delete(id);
        this.size--;
      }
    if (calls.size === 0) this.byDevice.delete(deviceId);
    return calls;
  }
}

/**
 * JOINs and LEAVEs for a group call this gateway does not know, held while the host device's
 * stream here is young enough that the call may still be on its way from the gateway the
 * device left (handed off when its grace is over); released when it comes or the wait is over.
 */
export class HeldFrames<R extends { deviceId: string; openedAtMs: number }, E extends { callId: string }> {
  private readonly waiting = new Map<string, { receiver: R; ev: E }[]>();
  private count = 0;

  constructor(
    private readonly now: () => number,
    private readonly answer: (receiver: R, ev: E) => void,
  ) {}

  /** True if held (answered later by `answer`). */
  hold(receiver: R, ev: E): boolean {
    const until = receiver.openedAtMs + CALL_LIMITS.dropGraceMs + CALL_LIMITS.handoffWaitMs;
    const now = this.now();
    if (until <= now || this.count >= CALL_LIMITS.handoffWaiting) return false;
    const key = `${receiver.deviceId}\n${ev.callId}`;
    const list = this.waiting.get(key);
    if (list === undefined) {
      this.waiting.set(key, [{ receiver, ev }]);
      setTimeout(() => this.release(receiver.deviceId, ev.callId), until - now).unref();
    } else list.push({ receiver, ev });
    this.count++;
    return true;
  }

  /** Answers what was held for the host device and call. */
  release(deviceId: string, callId: string): void {
    const key = `${deviceId}\n${callId}`;
    const list = this.waiting.get(key) ?? [];
    this.waiting.delete(key);
    this.count -= list.length;
    for (const { receiver, ev } of list) this.answer(receiver, ev);
  }

  clear(): void {
    this.waiting.clear();
    this.count = 0;
  }
}

/**
 * 1:1 calls ringing on devices here, so they stop ringing even if the caller's gateway died
 * (its ring-out HANGUP never comes): each ring ends on its own CALL_LIMITS.ringEndMs after the
 * offer (the caller's gateway rings out at ringMs) unless the call moved on meanwhile (taken,
 * declined, hung up, taken elsewhere). Bounded per device and in all; timers are unref'd.
 */
export class RingWatch<R extends { deviceId: string }> {
  private readonly rings = new Map<string, NodeJS.Timeout>();
  private readonly perDevice = new Map<string, number>();

  constructor(
    /** Tells the device the call rang out (HANGUP, RING_TIMEOUT). */
    private readonly rangOut: (receiver: R, callId: string, fromUserId: string, fromDeviceId: string) => void,
    private readonly ringEndMs: number = CALL_LIMITS.ringEndMs,
  ) {}

  /** An offer rang the receiver's device (a repeated offer keeps its first timer). */
  ringing(receiver: R, callId: string, fromUserId: string, fromDeviceId: string): void {
    const key = `${receiver.deviceId}\n${callId}`;
    const n = this.perDevice.get(receiver.deviceId) ?? 0;
    if (this.rings.has(key) || n >= CALL_LIMITS.payloadsPerFrame || this.rings.size >= CALL_LIMITS.remembered)
      return;
    const timer = setTimeout(() => {
      if (this.over(receiver.deviceId, callId)) this.rangOut(receiver, callId, fromUserId, fromDeviceId);
    }, this.ringEndMs);
    timer.unref();
    this.rings.set(key, timer);
    this.perDevice.set(receiver.deviceId, n + 1);
  }

  /** The call stopped ringing on the device; true if it was ringing. */
  over(deviceId: string, callId: string): boolean {
    const key = `${deviceId}\n${callId}`;
    const timer = this.rings.get(key);
    if (timer === undefined) return false;
    clearTimeout(timer);
    this.rings.delete(key);
    const n = (this.perDevice.get(deviceId) ?? 1) - 1;
    if (n <= 0) this.perDevice.delete(deviceId);
    else this.perDevice.set(deviceId, n);
    return true;
  }

  stop(): void {
    for (const t of this.rings.values()) clearTimeout(t);
    this.rings.clear();
    this.perDevice.clear();
  }
}
