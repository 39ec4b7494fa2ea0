import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { BusEvent, DeliveryBatch } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { NotificationService } from "../../gen/switchboard/internal/v1/notification_pb.js";
import type { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import type { DeliveryChannel, EventBus, Unsubscribe } from "../bus/types.js";
import type { Principal, Tokens } from "../common/auth.js";
import { isTransportFailure } from "../common/boundary.js";
import type { Limits } from "../common/config.js";
import { SupersededError, UnauthenticatedError, UnavailableError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { LocalRateLimiter } from "../common/rate-limit/memory.js";
import type { RateLimit, RateLimiter } from "../common/rate-limit/types.js";
import { carries, endSpan, SpanKind, startSpan } from "../common/telemetry.js";
import { eventLoopDelay, SendAdmission } from "./admission.js";
import { CursorBatcher, SendBatcher, type SequencerCalls } from "./batchers.js";
import { BlockLists } from "./blocks.js";
import { CallRelay } from "./calls/relay.js";
import { DeviceSets } from "./device-set.js";
import { observeGateway } from "./observe.js";
import { PrivacyView } from "./privacy.js";
import { RouteKeeper } from "./routes.js";
import { Session } from "./session.js";
import type { GatewayMetrics, GatewayObserver, SessionHost } from "./types.js";
import { requireEntrySize } from "./untrusted.js";

export type { GatewayMetrics } from "./types.js";

/** A refusal reason is logged at most once per this many milliseconds (with the count so far). */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** Devices whose status or send bucket a gateway remembers at most. */
const DEVICE_MAPS_MAX = 200_000;

/** What a gateway needs from the rest of the system. */
export interface GatewayDeps {
  /** This gateway instance's id (routes point at it). */
  id: string;
  /** The sequencer (routed to the owning replica): appends, cursors, sync state, history. */
  sequencer: Client<typeof SequencerService>;
  /** The accounts directory: device status, device registrations, users and their privacy. */
  directory: Client<typeof DirectoryService>;
  /** The presence service: routes of streams to gateways, and users' presence. */
  presence: Client<typeof PresenceService>;
  /** Where fanout delivers entries, receipts and typing to this gateway's streams. */
  delivery: DeliveryChannel;
  /** Push wake-ups of calls for callees' devices without a stream; unset: calls ring online devices only. */
  notification?: Client<typeof NotificationService>;
  /** The SFU group calls send media to (SWITCHBOARD_CALL_SFU_URL); unset: a mesh. */
  callSfuUrl?: string | undefined;
  /** The secret shared with that SFU, to sign devices' admissions (SWITCHBOARD_CALL_SFU_SECRET). */
  callSfuSecret?: string | undefined;
  /** Broadcasts every gateway hears: presence changes, low prekeys, revoked devices. */
  bus: EventBus;
  /** Verifies devices' access tokens. */
  tokens: Tokens;
  /** The limits every stream and call enforces. */
  limits: Limits;
  /** The stream port as clients reach it (SWITCHBOARD_STREAM_URL), named in every ready frame. */
  streamUrl?: string | undefined;
  /** The gateway's logger. */
  log: Logger;
  /** Per-device send limits: this gateway's memory, or shared by every gateway (Redis). */
  rateLimiter?: RateLimiter;
  /** Route lifetime without a heartbeat, in milliseconds. */
  routeTtlMs?: number;
  /**
   * How often the gateway checks that the route store still holds its routes, in milliseconds
   * (a lost route means live entries reach no stream until it is registered again).
   */
  routeCheckMs?: number;
  /** How long a device's active status is trusted without asking accounts, in milliseconds. */
  deviceCacheMs?: number;
  /** How often device cursors are flushed to the sequencer, in milliseconds. */
  cursorFlushMs?: number;
  /** How long a user's device list is trusted to accept a pairwise send, in milliseconds. */
  deviceSetTtlMs?: number;
  /** The clock, in milliseconds since the Unix epoch (Date.now unless a test sets it). */
  now?: () => number;
}

/**
 * The edge: device streams and everything they share on this gateway instance (the send and
 * cursor batchers, per-device rate limits, route registration, presence subscriptions).
 */
export class GatewayCore implements SessionHost<Session> {
  // The members SessionHost names are described in types.ts.
  readonly id: string;
  readonly sequencer: Client<typeof SequencerService>;
  readonly presence: Client<typeof PresenceService>;
  readonly limits: Limits;
  readonly streamUrl: string;
  readonly log: Logger;
  readonly now: () => number;
  readonly sends: SendBatcher;
  private readonly admission: SendAdmission;
  readonly cursors: CursorBatcher;
  /** The check of pairwise sends' per-device ciphertexts against the users' devices. */
  readonly devices: DeviceSets;
  readonly blocks: BlockLists;
  readonly privacy: PrivacyView;
  /** Call signalling: relayed live to the peer's devices (calls/relay.ts). */
  readonly calls: CallRelay;
  /** Latency histograms; gauges and counters are read from this object when scraped. */
  readonly observe: GatewayObserver;
  readonly metrics: GatewayMetrics = {
    droppedEvents: 0,
    floodClosures: 0,
    rejectedRate: 0,
    rejectedInFlight: 0,
    replacedStreams: 0,
    refusals: new Map(),
  };
  private readonly refusalLoggedAt = new Map<string, number>();
  private readonly directory: Client<typeof DirectoryService>;
  private readonly tokens: Tokens;
  private readonly byDevice = new Map<string, Session[]>();
  /** The streams in byDevice's lists, kept as they change: a metrics scrape reads it, not the lists. */
  private streams = 0;
  private readonly watchers = new Map<string, Set<Session>>();
  private readonly rateLimiter: RateLimiter;
  private readonly sendLimit: RateLimit;
  /** The stream's frame bucket, per device, for frames that arrive as unary calls (web.ts). */
  private readonly frameLimit: RateLimit;
  private readonly deviceStatus = new Map<string, { active: boolean; checkedAt: number }>();
  private readonly deviceCacheMs: number;
  private readonly stops: Unsubscribe[] = [];
  /** The event loop's delay, one of the send admission's signals (admission.ts). */
  private readonly loopDelay = eventLoopDelay();
  private readonly routes: RouteKeeper;
  private draining = false;

  constructor(deps: GatewayDeps) {
    this.id = deps.id;
    this.sequencer = deps.sequencer;
    this.directory = deps.directory;
    this.presence = deps.presence;
    this.tokens = deps.tokens;
    this.limits = deps.limits;
    this.streamUrl = deps.streamUrl ?? "";
    this.log = deps.log;
    this.now = deps.now ?? Date.now;
    this.deviceCacheMs = deps.deviceCacheMs ?? 30_000;
    this.rateLimiter = deps.rateLimiter ?? new LocalRateLimiter();
    this.sendLimit = { name: "send", rate: this.limits.sendsPerSecond, burst: this.limits.sendBurst };
    this.frameLimit = { name: "frames", rate: this.limits.framesPerSecond, burst: this.limits.frameBurst };
    const calls: SequencerCalls = {
      append: async (items) => (await this.sequencer.append({ items })).results,
      updateCursors: async (updates) => {
        await this.sequencer.updateCursors({ updates });
      },
    };
    this.admission = new SendAdmission(
      {
        maxInFlight: this.limits.gatewaySendsInFlight,
        maxBytesInFlight: this.limits.gatewaySendBytesInFlight,
        queueTargetMs: this.limits.sendQueueTargetMs,
      },
      (signal, inFlight) =>
        this.refused("server_overloaded", "send refused: the gateway is past its capacity", {
          signal,
          inFlight,
        }),
      undefined,
      undefined,
      this.loopDelay.read,
    );
    this.sends = new SendBatcher(calls, this.log, this.admission);
    this.cursors = new CursorBatcher(
      calls,
      this.log,
      deps.cursorFlushMs ?? 25,
      (seconds) => this.observe.cursorLag(seconds),
      this.now,
    );
    this.devices = new DeviceSets(this.directory, this.sequencer, {
      maxPayloadBytes: this.limits.maxPayloadBytes,
      maxDevicesPerUser: this.limits.maxDevicesPerUser,
      maxGroupSize: this.limits.maxGroupSize,
      ...(deps.deviceSetTtlMs !== undefined && { ttlMs: deps.deviceSetTtlMs }),
      now: this.now,
    });
    this.blocks = new BlockLists(this.directory);
    this.privacy = new PrivacyView(this.directory);
    this.calls = new CallRelay({
      gatewayId: this.id,
      presence: this.presence,
      sequencer: this.sequencer,
      delivery: deps.delivery,
      log: this.log,
      now: this.now,
      refused: (reason, message, fields) => this.refused(reason, message, fields),
      blockedBy: async (owner, userId) => (await this.blocks.listOf(owner)).has(userId),
      hasStream: (deviceId) => this.byDevice.has(deviceId),
      userDevices: async (userId) =>
        (await this.directory.getUserDevices({ userIds: [userId] })).users.find((u) => u.userId === userId)
          ?.deviceIds ?? [],
      devicesOf: async (userIds) =>
        new Map((await this.directory.getUserDevices({ userIds })).users.map((u) => [u.userId, u.deviceIds])),
      sfuUrl: deps.callSfuUrl,
      sfuSecret: deps.callSfuSecret,
      ...(deps.notification !== undefined && {
        notifyCall: async (call) => {
          await deps.notification!.notifyCall(call);
        },
      }),
    });
    this.stops.push(this.loopDelay.stop);
    this.stops.push(() => this.calls.stop());
    this.stops.push(deps.delivery.listen(this.id, (batch) => this.onDelivery(batch)));
    this.stops.push(deps.bus.onBroadcast((events) => this.onBroadcast(events)));
    this.routes = new RouteKeeper({
      id: this.id,
      presence: this.presence,
      log: this.log,
      now: this.now,
      routeTtlMs: deps.routeTtlMs ?? 30_000,
      routeCheckMs: deps.routeCheckMs,
      sessions: () => [...this.byDevice.values()].flat(),
      draining: () => this.draining,
    });
    this.observe = observeGateway(this);
  }

  /**
   * Counts a refusal and logs it at info, once per reason per REFUSAL_LOG_INTERVAL_MS so a flood
   * of refusals cannot become a flood of log lines. Fields carry ids and sizes, never content.
   */
  refused(reason: string, message: string, fields: Record<string, string | number> = {}): void {
    const count = (this.metrics.refusals.get(reason) ?? 0) + 1;
    this.metrics.refusals.set(reason, count);
    const now = this.now();
    const last = this.refusalLoggedAt.get(reason);
    if (last !== undefined && now - last < REFUSAL_LOG_INTERVAL_MS) return;
    this.refusalLoggedAt.set(reason, now);
    this.log.info({ refusal: reason, count, ...fields }, message);
  }

  /**
   * Logs at warn that the gateway works around a service that does not answer, once per reason
   * per REFUSAL_LOG_INTERVAL_MS (it is not a refusal, so nothing is counted).
   */
  private degraded(reason: string, message: string, fields: Record<string, string | number> = {}): void {
    const key = `degraded:${reason}`;
    const now = this.now();
    const last = this.refusalLoggedAt.get(key);
    if (last !== undefined && now - last < REFUSAL_LOG_INTERVAL_MS) return;
    this.refusalLoggedAt.set(key, now);
    this.log.warn({ degraded: reason, ...fields }, message);
  }

  /** A send's encoded entry within its limit (untrusted.ts), or INVALID_ARGUMENT, counted. */
  checkEntrySize(entry: OutgoingEntry): void {
    try {
      requireEntrySize(entry, this.limits);
    } catch (err) {
      this.refused("entry_too_large", "send refused: the encoded entry passes its limit", {
        conversationId: entry.conversationId,
      });
      throw err;
    }
  }

  /** Streams open on this gateway. */
  get streamCount(): number {
    return this.streams;
  }

  get sendsInFlight(): number {
    return this.admission.sendsInFlight;
  }

  get sendsInFlightBound(): number {
    return this.admission.inFlightBound;
  }

  /**
   * Device frames read by another thread (the stream port's) reached this one `waitedMs` after
   * that thread read them: part of their sends' wait, which the admission counts.
   */
  handedOver(waitedMs: number): void {
    this.admission.handedOver(waitedMs);
  }

  /** Keeps a per-device map within bounds by dropping its oldest entries (insertion order). */
  private static trim<V>(map: Map<string, V>, max: number): void {
    for (const key of map.keys()) {
      if (map.size <= max) return;
      map.delete(key);
    }
  }

  /**
   * Verifies a token and that its device is still active. While accounts does not answer, the
   * signed, unexpired token stands in for the status check (what this gateway last heard of the
   * device, if anything, still counts): a device revoked meanwhile is told by the revocation
   * broadcast, and its status is asked again at its next request once accounts answers.
   */
  async authenticate(header: string | null): Promise<Principal> {
    const principal = await this.tokens.verifyHeader(header);
    const cached = this.deviceStatus.get(principal.deviceId);
    let active = cached?.active;
    if (cached === undefined || this.now() - cached.checkedAt > this.deviceCacheMs) {
      try {
        const { devices } = await this.directory.getDevices({ deviceIds: [principal.deviceId] });
        active = devices[0]?.active === true && devices[0].userId === principal.userId;
        this.deviceStatus.delete(principal.deviceId);
        this.deviceStatus.set(principal.deviceId, { active, checkedAt: this.now() });
        GatewayCore.trim(this.deviceStatus, DEVICE_MAPS_MAX);
      } catch (err) {
        if (!unreachable(err)) throw err;
        active = cached?.active ?? true;
        this.degraded(
          "accounts_unreachable",
          "accounts does not answer: device status taken from the token (and what this gateway last heard)",
          { deviceId: principal.deviceId },
        );
      }
    }
    if (!active) throw new UnauthenticatedError("device has been revoked");
    return principal;
  }

  /**
   * Takes a send token for a device: 0 when allowed, else milliseconds to wait. Synchronous with
   * the in-memory limiter (the common one-process case pays no promise); a promise with the
   * shared one.
   */
  takeSendToken(deviceId: string): number | Promise<number> {
    if (this.rateLimiter instanceof LocalRateLimiter)
      return this.rateLimiter.takeSync(this.sendLimit, deviceId);
    return this.rateLimiter.take(this.sendLimit, deviceId);
  }

  /** Takes a frame token for a device's unary ack or typing call: 0 when allowed, else milliseconds to wait. */
  takeFrameToken(deviceId: string): number | Promise<number> {
    if (this.rateLimiter instanceof LocalRateLimiter)
      return this.rateLimiter.takeSync(this.frameLimit, deviceId);
    return this.rateLimiter.take(this.frameLimit, deviceId);
  }

  /** Opens a stream for a device, replacing its oldest stream beyond the per-device limit. */
  open(principal: Principal): Session {
    if (this.draining) throw new UnavailableError("gateway is shutting down; reconnect");
    const session = new Session(principal, this);
    const list = this.byDevice.get(principal.deviceId) ?? [];
    list.push(session);
    this.streams++;
    this.byDevice.set(principal.deviceId, list);
    while (list.length > this.limits.maxConnectionsPerDevice) {
      const oldest = list[0]!;
      this.metrics.replacedStreams++;
      oldest.close(
        new SupersededError(
          `replaced by a newer stream of this device (at most ${this.limits.maxConnectionsPerDevice} per device)`,
        ),
      );
    }
    this.log.info(
      { userId: principal.userId, deviceId: principal.deviceId, sessionId: session.id },
      "stream opened",
    );
    return session;
  }

  /**
   * Makes the stream reachable by fanout. The stream reads its backlog only after this resolves:
   * an entry committed before the route existed is in the backlog, one committed after reaches
   * the stream live, so none falls between the two. If the route store does not answer, the
   * stream goes on without a route: the route check registers it once the store is back, and
   * then the stream reads its sync state again for what was committed meanwhile.
   */
  register(session: Session): Promise<void> {
    return this.routes.register(session);
  }

  /** Forgets a closed stream. */
  detach(session: Session): void {
    const list = this.byDevice.get(session.deviceId);
    if (list !== undefined) {
      const i = list.indexOf(session);
      if (i >= 0) {
        list.splice(i, 1);
        this.streams--;
      }
      if (list.length === 0) {
        this.byDevice.delete(session.deviceId);
      }
    }
    for (const id of session.subscriptions) this.unsubscribePresence(session, id);
    this.routes.unregister(session);
    this.calls.streamClosed(session.userId, session.deviceId);
    this.log.info(
      { userId: session.userId, deviceId: session.deviceId, sessionId: session.id },
      "stream closed",
    );
  }

  /** Sends the stream every presence change of the user. */
  subscribePresence(session: Session, userId: string): void {
    session.addSubscription(userId);
    let set = this.watchers.get(userId);
    if (set === undefined) {
      set = new Set();
      this.watchers.set(userId, set);
    }
    set.add(session);
  }

  /** Stops sending the stream the user's presence changes. */
  unsubscribePresence(session: Session, userId: string): void {
    session.removeSubscription(userId);
    const set = this.watchers.get(userId);
    set?.delete(session);
    if (set?.size === 0) this.watchers.delete(userId);
  }

  /** Devices with at least one stream open on this gateway. */
  get deviceCount(): number {
    return this.byDevice.size;
  }

  /** True once the gateway refuses new streams (drained by an operator, or shutting down). */
  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * Refuses new streams and closes every open one telling devices to reconnect elsewhere;
   * returns how many it closed. Unlike drain() it keeps the delivery and broadcast
   * subscriptions and the cursor batcher, so an operator can empty a gateway that keeps running
   * until it is stopped (which then calls drain()).
   */
  closeStreams(): number {
    this.draining = true;
    let closed = 0;
    for (const list of [...this.byDevice.values()]) {
      for (const s of [...list]) {
        s.close(new UnavailableError("gateway is shutting down; reconnect"));
        closed++;
      }
    }
    return closed;
  }

  /** Closes every stream telling devices to reconnect elsewhere, and flushes cursors. */
  async drain(): Promise<void> {
    this.routes.stop();
    this.closeStreams();
    for (const stop of this.stops.splice(0)) stop();
    await this.cursors.close();
  }

  private onDelivery(batch: DeliveryBatch): void {
    const now = Date.now();
    let leastLagMs = Number.POSITIVE_INFINITY;
    for (const d of batch.deliveries) {
      const traced = carries(d.traceContext)
        ? startSpan("gateway.deliver", d.traceContext, {
            kind: SpanKind.CONSUMER,
            attributes: { "switchboard.instance": this.id, "switchboard.devices": d.deviceIds.length },
          }).span
        : undefined;
      if (d.payload.case === "entry") {
        const lagMs = now - Number(d.payload.value.serverTimeMs);
        this.observe.deliveryLag(lagMs / 1000);
        if (lagMs < leastLagMs) leastLagMs = lagMs;
        // Group sends are checked against the members; a change reaches this gateway when any
        // member's device is here, which the sender's usually is.
        if (d.payload.value.body.case === "membership")
          this.devices.membershipChanged(d.payload.value.conversationId);
      }
      // A call's state handed here, for the device whether or not its stream is still here.
      if (d.payload.case === "callHandoff" && d.deviceIds[0] !== undefined)
        this.calls.adopt(d.payload.value, d.deviceIds[0]);
      for (const deviceId of d.deviceIds) {
        for (const session of this.byDevice.get(deviceId) ?? []) {
          switch (d.payload.case) {
            case "entry":
              session.deliverEntry(d.payload.value);
              break;
            case "receipt":
              session.deliverReceipt(d.payload.value);
              break;
            case "typing":
              session.deliverTyping(d.payload.value);
              break;
            case "call":
              this.calls.deliver(session, d.payload.value);
              break;
            default:
              break;
          }
        }
      }
      if (traced) endSpan(traced);
    }
    // Pushes senders back while deliveries run far behind acks (admission.ts).
    if (leastLagMs !== Number.POSITIVE_INFINITY) this.admission.delivered(leastLagMs);
  }

  private onBroadcast(events: readonly BusEvent[]): void {
    for (const { event } of events) {
      if (event.case === "presenceChanged" && event.value.presence) {
        const p = event.value.presence;
        for (const s of this.watchers.get(p.userId) ?? []) s.deliverPresence(p);
      } else if (event.case === "prekeysLow" && event.value.frame) {
        for (const s of this.byDevice.get(event.value.deviceId) ?? []) s.deliverPrekeysLow(event.value.frame);
      } else if (event.case === "blocksChanged") {
        this.blocks.changed(event.value.userId);
        for (const d of event.value.deviceIds)
          for (const s of this.byDevice.get(d) ?? []) s.deliverBlocksChanged();
      } else if (event.case === "privacyChanged") {
        this.privacy.changed(event.value.userId);
        for (const d of event.value.deviceIds)
          for (const s of this.byDevice.get(d) ?? []) s.deliverPrivacyChanged();
      } else if (event.case === "deviceRevoked") {
        this.deviceStatus.set(event.value.deviceId, { active: false, checkedAt: this.now() });
        this.devices.deviceRevoked(event.value.userId);
        for (const s of [...(this.byDevice.get(event.value.deviceId) ?? [])]) {
          s.close(new UnauthenticatedError("device has been revoked"));
        }
      }
    }
  }
}

/** A call that failed because the service did not answer (down, restarting), not a refusal. */
function unreachable(err: unknown): boolean {
  const e = ConnectError.from(err);
  return e.code === Code.Unavailable || e.code === Code.DeadlineExceeded || isTransportFailure(e);
}
