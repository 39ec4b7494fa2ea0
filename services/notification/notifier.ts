import { createHash } from "node:crypto";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { Logger } from "../common/log.js";
import { TokenBucket } from "../common/rate-limit/token-bucket.js";
import { targetFromWire } from "./targets.js";
import type { PushCall, PushMessage, PushOutcome, PushProvider, PushTarget } from "./types.js";

/** Options for the notifier; defaults in `defaultNotifierOptions`. */
export interface NotifierOptions {
  /** Wake-ups waiting (one per device and conversation); beyond this new ones are shed. */
  queueLimit: number;
  /** Pushes in flight to providers at once. */
  concurrency: number;
  /** Sustained pushes per device per minute (token bucket refill). */
  perDevicePerMinute: number;
  /** Pushes per device in a burst. */
  perDeviceBurst: number;
  /** Attempts per wake-up before it is dropped (the device still syncs when it connects). */
  maxAttempts: number;
  /** First retry delay, in milliseconds; doubles per attempt, with full jitter. */
  retryBaseMs: number;
  /** Longest retry delay, in milliseconds. */
  retryCapMs: number;
  /** How long providers keep trying to deliver one push, in seconds. */
  ttlSeconds: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
  /** Random numbers in [0, 1), for jitter. */
  random?: () => number;
}

export const defaultNotifierOptions: NotifierOptions = {
  queueLimit: 100_000,
  concurrency: 64,
  perDevicePerMinute: 12,
  perDeviceBurst: 4,
  maxAttempts: 6,
  retryBaseMs: 1000,
  retryCapMs: 5 * 60_000,
  ttlSeconds: 24 * 3600,
};

/** What the notifier did, for operators (switchboard.push.wakeups in server/observe.ts; admin stats). */
export interface NotifierMetrics {
  /** New wake-ups queued. */
  queued: number;
  /** Wake-ups merged into one already waiting for the same device and conversation. */
  collapsed: number;
  /** Wake-ups refused because the queue was full. */
  shed: number;
  /** Pushes the provider accepted. */
  delivered: number;
  /** Targets removed because the provider reported them gone. */
  gone: number;
  /** Attempts that will be retried. */
  retried: number;
  /** Pushes that cannot succeed (bad request, bad credentials). */
  failed: number;
  /** Wake-ups dropped after the last attempt. */
  expired: number;
  /** Times a device's rate limit delayed a push. */
  rateLimited: number;
  /** Wake-ups for devices with no push target. */
  noTarget: number;
}

/** One device to wake for one conversation. */
export interface WakeUp {
  userId: string;
  deviceId: string;
  conversationId: string;
  seq: number;
  /** Messages wake the device now; other entries may wait for the device's own schedule. */
  urgent: boolean;
}

/** One device to wake, or stop ringing, for one call. */
export interface CallWakeUp {
  userId: string;
  deviceId: string;
  /** The direct conversation of caller and callee. */
  conversationId: string;
  callId: string;
  /** True once the call ended: withdraws the wake-up, or supersedes one already sent. */
  ended: boolean;
}

/** How long providers keep trying to deliver a call's push, in seconds: about its ringing. */
export const CALL_PUSH_TTL_SECONDS = 120;

interface Pending extends WakeUp {
  /** Set for a call's wake-up. */
  call?: PushCall;
  attempts: number;
  /** The seq of the push in flight, if one is. */
  sending: number | undefined;
}

const BUCKETS_MAX = 100_000;

/**
 * Turns wake-ups into pushes. Never blocks the caller: wake-ups wait in a bounded map with one
 * entry per (device, conversation), so a burst of messages becomes one push; a device gets at
 * most its rate of pushes; failures back off exponentially with full jitter and honour
 * Retry-After; a target the provider reports gone is removed from the device.
 */
export class Notifier {
  readonly metrics: NotifierMetrics = {
    queued: 0,
    collapsed: 0,
    shed: 0,
    delivered: 0,
    gone: 0,
    retried: 0,
    failed: 0,
    expired: 0,
    rateLimited: 0,
    noTarget: 0,
  };
  private readonly pending = new Map<string, Pending>();
  // Keys due now, in the order they became due (a Set is an ordered queue without duplicates).
  private readonly ready = new Set<string>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly providers: Map<PushTarget["kind"], PushProvider>;
  private readonly options: NotifierOptions;
  private readonly now: () => number;
  private readonly random: () => number;
  private inFlight = 0;
  private idle: Array<() => void> = [];
  private closed = false;

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    providers: readonly PushProvider[],
    private readonly log: Logger,
    options: Partial<NotifierOptions> = {},
  ) {
    this.options = { ...defaultNotifierOptions, ...options };
    this.now = this.options.now ?? Date.now;
    this.random = this.options.random ?? Math.random;
    this.providers = new Map(providers.map((p) => [p.kind, p]));
  }

  /** Wake-ups waiting or in flight. */
  get size(): number {
    return this.pending.size;
  }

  /** Queues wake-ups; returns how many were queued (or collapsed) and how many were shed. */
  notify(wakeUps: readonly WakeUp[]): { queued: number; shed: number } {
    let queued = 0;
    let shed = 0;
    for (const w of wakeUps) {
      const key = `${w.deviceId}\n${w.conversationId}`;
      const existing = this.pending.get(key);
      if (existing !== undefined) {
        if (w.seq > existing.seq) existing.seq = w.seq;
        existing.urgent ||= w.urgent;
        this.metrics.collapsed++;
        queued++;
        continue;
      }
      if (this.closed || this.pending.size >= this.options.queueLimit) {
        this.metrics.shed++;
        shed++;
        continue;
      }
      this.pending.set(key, { ...w, attempts: 0, sending: undefined });
      this.ready.add(key);
      this.metrics.queued++;
      queued++;
    }
    this.pump();
    return { queued, shed };
  }

  /**
   * Queues calls' wake-ups, one per device and call: an end that comes before the wake-up left
   * withdraws it; one that comes later is sent under the same collapse key, superseding it at
   * the provider (and telling a device that rings to stop). Call pushes have buckets of their
   * own, so a busy conversation cannot delay a ringing phone.
   */
  notifyCall(wakeUps: readonly CallWakeUp[]): { queued: number; shed: number } {
    let queued = 0;
    let shed = 0;
    for (const w of wakeUps) {
      const key = `${w.deviceId}\ncall\n${w.callId}`;
      const existing = this.pending.get(key);
      if (existing?.call !== undefined) {
        if (w.ended && !existing.call.ended) {
          if (existing.sending === undefined && existing.seq === 0) {
            // It never left: withdrawn.
            this.pending.delete(key);
            this.ready.delete(key);
          } else {
            existing.call.ended = true;
            existing.seq = (existing.sending ?? existing.seq) + 1;
            existing.attempts = 0;
            if (existing.sending === undefined) this.ready.add(key);
          }
        }
        this.metrics.collapsed++;
        queued++;
        continue;
      }
      if (this.closed || this.pending.size >= this.options.queueLimit) {
        this.metrics.shed++;
        shed++;
        continue;
      }
      this.pending.set(key, {
        userId: w.userId,
        deviceId: w.deviceId,
        conversationId: w.conversationId,
        seq: 0,
        urgent: true,
        call: { callId: w.callId, ended: w.ended },
        attempts: 0,
        sending: undefined,
      });
      this.ready.add(key);
      this.metrics.queued++;
      queued++;
    }
    this.pump();
    return { queued, shed };
  }

  /** Stops taking work, cancels waits and lets pushes in flight finish. */
  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.ready.clear();
    while (this.inFlight > 0) await new Promise<void>((r) => this.idle.push(r));
    await Promise.all([...this.providers.values()].map((p) => p.close()));
  }

  private pump(): void {
    if (this.closed) return;
    const batch: Pending[] = [];
    for (const key of this.ready) {
      if (this.inFlight + batch.length >= this.options.concurrency) break;
      this.ready.delete(key);
      const item = this.pending.get(key);
      if (item === undefined || item.sending !== undefined) continue;
      const wait = this.bucket(item.call ? `call\n${item.deviceId}` : item.deviceId).take(this.now());
      if (wait > 0) {
        this.metrics.rateLimited++;
        this.later(key, wait);
        continue;
      }
      item.sending = item.seq;
      batch.push(item);
    }
    if (batch.length === 0) return;
    this.inFlight += batch.length;
    void this.send(batch);
  }

  private bucket(deviceId: string): TokenBucket {
    let bucket = this.buckets.get(deviceId);
    if (bucket === undefined) {
      if (this.buckets.size >= BUCKETS_MAX) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
      bucket = new TokenBucket(this.options.perDevicePerMinute / 60, this.options.perDeviceBurst, this.now());
      this.buckets.set(deviceId, bucket);
    }
    return bucket;
  }

  /** Makes a key due again after a delay. */
  private later(key: string, delayMs: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.pending.has(key)) {
        this.ready.add(key);
        this.pump();
      }
    }, delayMs);
    timer.unref();
    this.timers.add(timer);
  }

  private async send(batch: Pending[]): Promise<void> {
    let targets: Map<string, { targetId: string; target: PushTarget }>;
    try {
      const { targets: found } = await this.directory.getPushTargets({
        deviceIds: batch.map((b) => b.deviceId),
      });
      targets = new Map();
      for (const t of found) {
        const target = targetFromWire(t.target);
        if (target !== undefined) targets.set(t.deviceId, { targetId: t.targetId, target });
      }
    } catch (err) {
      this.log.warn({ err, pushes: batch.length }, "push targets could not be read; retrying");
      for (const item of batch)
        this.settle(item, { status: "retry", reason: "directory unavailable" }, undefined);
      return;
    }
    await Promise.all(
      batch.map(async (item) => {
        const registration = targets.get(item.deviceId);
        if (registration === undefined) {
          this.metrics.noTarget++;
          this.settle(item, { status: "delivered" }, undefined);
          return;
        }
        const provider = this.providers.get(registration.target.kind);
        let outcome: PushOutcome;
        if (provider === undefined) {
          outcome = { status: "failed", reason: `no ${registration.target.kind} provider is configured` };
        } else {
          outcome = await provider.send(registration.target, this.message(item)).catch((err: unknown) => ({
            status: "retry" as const,
            reason: `provider threw: ${err instanceof Error ? err.message : String(err)}`,
          }));
        }
        // A PushKit token is not the token a device registers for wake-ups: APNs refusing the
        // VoIP push says nothing about the registered target, which must stay.
        if (item.call && registration.target.kind === "apns" && outcome.status === "gone")
          outcome = { status: "failed", reason: outcome.reason };
        this.settle(item, outcome, registration.targetId);
      }),
    );
  }

  private message(item: Pending): PushMessage {
    if (item.call !== undefined)
      return {
        conversationId: item.conversationId,
        seq: 0,
        collapseKey: callCollapseKey(item.call.callId),
        ttlSeconds: CALL_PUSH_TTL_SECONDS,
        urgency: "high",
        call: { ...item.call },
      };
    return {
      conversationId: item.conversationId,
      seq: item.seq,
      // Conversation ids are 28 characters of [a-z0-9_], within every provider's limit.
      collapseKey: item.conversationId,
      ttlSeconds: this.options.ttlSeconds,
      urgency: item.urgent ? "high" : "normal",
    };
  }

  private settle(item: Pending, outcome: PushOutcome, targetId: string | undefined): void {
    const key = item.call
      ? `${item.deviceId}\ncall\n${item.call.callId}`
      : `${item.deviceId}\n${item.conversationId}`;
    const sent = item.sending ?? item.seq;
    item.sending = undefined;
    switch (outcome.status) {
      case "delivered":
        if (targetId !== undefined) this.metrics.delivered++;
        // A newer entry arrived while this push was in flight: wake the device again for it.
        if (item.seq > sent) {
          item.attempts = 0;
          this.ready.add(key);
        } else this.pending.delete(key);
        break;
      case "gone":
        this.metrics.gone++;
        this.pending.delete(key);
        if (targetId !== undefined) {
          this.directory
            .dropPushTarget({ deviceId: item.deviceId, targetId })
            .catch((err: unknown) =>
              this.log.warn({ err, deviceId: item.deviceId }, "could not remove a gone push target"),
            );
        }
        break;
      case "retry": {
        item.attempts++;
        if (item.attempts >= this.options.maxAttempts) {
          this.metrics.expired++;
          this.pending.delete(key);
          this.log.warn({ deviceId: item.deviceId, reason: outcome.reason }, "push given up after retries");
          break;
        }
        this.metrics.retried++;
        const backoff =
          this.random() * Math.min(this.options.retryCapMs, this.options.retryBaseMs * 2 ** item.attempts);
        this.later(key, Math.max(outcome.retryAfterMs ?? 0, backoff));
        break;
      }
      case "failed":
        this.metrics.failed++;
        this.pending.delete(key);
        this.log.warn({ deviceId: item.deviceId, reason: outcome.reason }, "push failed");
        break;
    }
    this.inFlight--;
    if (this.inFlight === 0) for (const r of this.idle.splice(0)) r();
    this.pump();
  }
}

/** A call's collapse key: 32 characters of [A-Za-z0-9_-] from the call id, the same for its end. */
export function callCollapseKey(callId: string): string {
  return `c${createHash("sha256").update(callId).digest("base64url").slice(0, 31)}`;
}
