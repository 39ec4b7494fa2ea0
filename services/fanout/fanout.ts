import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { type Context, context, trace as otelTrace, type Span } from "@opentelemetry/api";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import {
  type BusEvent,
  type Delivery,
  type DeliveryBatch,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import type { NotificationService, WakeUp } from "../../gen/switchboard/internal/v1/notification_pb.js";
import type { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { type Entry, MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import type { DeliveryChannel, EventBus, Unsubscribe } from "../bus/types.js";
import type { Logger } from "../common/log.js";
import { carries, endSpan, injectContext, SpanKind, startSpan } from "../common/telemetry.js";

/** Conversations whose member lists fanout keeps. */
const MEMBER_CACHE = 50_000;
/**
 * Member lists fetched at once for one batch. A batch of entries from conversations fanout has
 * not seen (a cold start, a moved shard) would otherwise wait for one sequencer call after
 * another: 500 new conversations held deliveries seconds behind their acks.
 */
const MEMBER_FETCHES = 32;
/** At most this many users per route lookup. */
const LOOKUP_CHUNK = 1024;
/**
 * How long users' device lists are trusted, in milliseconds: a newly linked device gets pushes
 * within this time (it gets every entry on connect regardless).
 */
const PUSH_CACHE_MS = 30_000;
const DEVICE_CACHE = 100_000;

interface Members {
  version: number;
  userIds: string[];
  /** Muted until, per member, in milliseconds since the Unix epoch. */
  mutes: Map<string, number>;
  mutesVersion: number;
}

/** Where fanout hands wake-ups for devices without a live stream. */
export interface PushHandoff {
  /** The accounts directory: which devices each member has, to find those without a stream. */
  directory: Client<typeof DirectoryService>;
  /** The notification service, which sends the (content-free) wake-ups. */
  notification: Client<typeof NotificationService>;
}

/** Who gets a push for an entry (besides being an offline member device), and how urgently. */
function pushPolicy(entry: Entry): { only?: string[]; urgent: boolean } | undefined {
  const body = entry.body;
  switch (body.case) {
    case "message":
      return { urgent: true };
    case "reaction":
      return { urgent: false };
    case "membership":
      // Being added to or removed from a conversation is worth a wake-up; other changes are not.
      if (body.value.action === MembershipAction.CREATED || body.value.action === MembershipAction.ADDED) {
        return { only: body.value.userIds, urgent: false };
      }
      if (body.value.action === MembershipAction.REMOVED) return { only: body.value.userIds, urgent: false };
      return undefined;
    default:
      return undefined;
  }
}

type Payload = Delivery["payload"];

/**
 * The live devices of these users, by the gateway that holds each. A set per gateway: a device
 * listed twice (a user named twice, a route registered twice) is delivered once.
 */
function devicesByGateway(
  userIds: readonly string[],
  routes: Map<string, Array<{ deviceId: string; gatewayId: string }>>,
): Map<string, string[]> {
  const sets = new Map<string, Set<string>>();
  for (const userId of userIds) {
    for (const r of routes.get(userId) ?? []) {
      let devices = sets.get(r.gatewayId);
      if (devices === undefined) {
        devices = new Set();
        sets.set(r.gatewayId, devices);
      }
      devices.add(r.deviceId);
    }
  }
  const lists = new Map<string, string[]>();
  for (const [gatewayId, devices] of sets) lists.set(gatewayId, [...devices]);
  return lists;
}

/**
 * Turns committed entries, receipts and typing indicators into deliveries: it resolves the
 * recipients, looks up their live routes in one call per batch, and hands each gateway one batch
 * holding everything for its devices, in event order. It keeps no state but a member cache keyed
 * by membership version, so any number of workers can share the bus.
 */
export class Fanout {
  private readonly members = new Map<string, Members>();
  private readonly devices = new Map<string, { deviceIds: string[]; fetchedAt: number }>();
  private readonly stops: Unsubscribe[] = [];

  constructor(
    private readonly bus: EventBus,
    private readonly delivery: DeliveryChannel,
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly presence: Client<typeof PresenceService>,
    private readonly log: Logger,
    private readonly push?: PushHandoff,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.stops.push(this.bus.consumeCommitted((events) => this.handle(events)));
    this.stops.push(
      this.bus.consumeEphemeral((events) => {
        this.handle(events).catch((err: unknown) => this.log.warn({ err }, "typing fanout failed"));
      }),
    );
  }

  /** Stops consuming; resolves once the batches in hand are delivered and the bus let go. */
  async stop(): Promise<void> {
    await Promise.all(this.stops.splice(0).map((stop) => stop()));
  }

  /** Delivers one batch of events; rejects (for redelivery) if members or routes cannot be looked up. */
  async handle(events: readonly BusEvent[]): Promise<void> {
    // A span per traced event, ended once its deliveries are handed over; deliveries carry it on.
    const spans: Span[] = [];
    // The calls fanout makes for an event (members, routes, pushes) run in its span's context,
    // so they are children in the sender's trace rather than traces of their own.
    const contexts: Context[] = [];
    // Each event's span's context, when it carries a trace.
    const traced = events.map(({ event, traceContext }): Context | undefined => {
      if (!carries(traceContext)) return undefined;
      const started = startSpan(`fanout.${event.case ?? "event"}`, traceContext, { kind: SpanKind.CONSUMER });
      spans.push(started.span);
      contexts.push(started.ctx);
      return started.ctx;
    });
    try {
      await this.fetchMembers(events, traced);
      const { plan, pushes } = await this.planOf(events, traced);
      await this.inBatchContext(contexts, () => this.route(plan, pushes));
      for (const span of spans) endSpan(span);
    } catch (err) {
      for (const span of spans) endSpan(span, err);
      throw err;
    }
  }

  /** Each event's recipients and payload, in event order, and the pushes its entries owe. */
  private async planOf(events: readonly BusEvent[], traced: ReadonlyArray<Context | undefined>) {
    const plan: Array<{ recipients: string[]; payload: Payload; trace: Record<string, string> }> = [];
    const pushes: Array<{ entry: Entry; userIds: string[]; urgent: boolean }> = [];
    for (const [i, { event }] of events.entries()) {
      const eventContext = traced[i];
      const ctx = eventContext ?? context.active();
      const trace = eventContext === undefined ? {} : injectContext(eventContext);
      switch (event.case) {
        case "entryCommitted": {
          const entry = event.value.entry;
          if (entry === undefined) break;
          const members = await context.with(ctx, () =>
            this.membersOf(
              entry.conversationId,
              Number(event.value.membersVersion),
              Number(event.value.mutesVersion),
            ),
          );
          // The cached members array itself when no one else is named (nearly always): a group's
          // entries then share one recipients array, which route() unites once per batch.
          const extra = event.value.extraRecipientUserIds;
          const recipients =
            extra.length === 0 ? members.userIds : [...new Set([...members.userIds, ...extra])];
          plan.push({ recipients, payload: { case: "entry", value: entry }, trace });
          const policy = this.push && pushPolicy(entry);
          if (policy) {
            const now = this.now();
            // A mention the sender chose to show the server wakes its user through a mute.
            const mentioned = entry.body.case === "message" ? entry.body.value.mentionedUserIds : [];
            const userIds = (policy.only ?? recipients).filter(
              (id) =>
                id !== entry.senderUserId && ((members.mutes.get(id) ?? 0) <= now || mentioned.includes(id)),
            );
            if (userIds.length > 0) pushes.push({ entry, userIds, urgent: policy.urgent });
          }
          break;
        }
        case "receiptIssued":
          if (event.value.receipt) {
            plan.push({
              recipients: event.value.notifyUserIds,
              payload: { case: "receipt", value: event.value.receipt },
              trace,
            });
          }
          break;
        case "typingRelayed":
          if (event.value.typing) {
            plan.push({
              recipients: event.value.recipientUserIds,
              payload: { case: "typing", value: event.value.typing },
              trace,
            });
          }
          break;
        default:
          break;
      }
    }
    return { plan, pushes };
  }

  /**
   * Runs the batch's shared work (one route lookup, the push hand-off) in the first traced
   * event's context, linked to the others' (OpenTelemetry's model for batched work): one span
   * "fanout.route" when the batch carries more than one trace, the first event's span otherwise.
   */
  private async inBatchContext<T>(contexts: Context[], work: () => Promise<T>): Promise<T> {
    const [first, ...others] = contexts;
    if (first === undefined) return work();
    if (others.length === 0) return context.with(first, work);
    const { span, ctx } = startSpan("fanout.route", first, {
      links: others.flatMap((c) => {
        const linked = otelTrace.getSpanContext(c);
        return linked ? [{ context: linked }] : [];
      }),
      attributes: { "switchboard.fanout.traces": contexts.length },
    });
    try {
      const result = await context.with(ctx, work);
      endSpan(span);
      return result;
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  }

  private async route(
    plan: Array<{ recipients: string[]; payload: Payload; trace: Record<string, string> }>,
    pushes: Array<{ entry: Entry; userIds: string[]; urgent: boolean }>,
  ): Promise<void> {
    if (plan.length === 0) return;
    // Every recipient once. The entries of one conversation share their recipients array (see
    // handle), so each distinct array is walked once, not once per entry: a batch of a group's
    // entries named its 100 members once per entry, the largest cost of routing a group.
    const lists = new Set<readonly string[]>();
    for (const item of plan) lists.add(item.recipients);
    const users = new Set<string>();
    for (const list of lists) for (const userId of list) users.add(userId);
    const routes = await this.routesOf([...users]);
    // Each distinct recipients array's devices by gateway, found once: the entries of a group share
    // theirs, and their deliveries share the device lists (messages are not changed once built).
    const targets = new Map<readonly string[], Map<string, string[]>>();
    const batches = new Map<string, DeliveryBatch>();
    for (const item of plan) {
      let byGateway = targets.get(item.recipients);
      if (byGateway === undefined) {
        byGateway = devicesByGateway(item.recipients, routes);
        targets.set(item.recipients, byGateway);
      }
      for (const [gatewayId, deviceIds] of byGateway) {
        let batch = batches.get(gatewayId);
        if (batch === undefined) {
          batch = create(DeliveryBatchSchema);
          batches.set(gatewayId, batch);
        }
        batch.deliveries.push(
          create(DeliverySchema, { deviceIds, payload: item.payload, traceContext: item.trace }),
        );
      }
    }
    if (pushes.length > 0) this.wakeOffline(pushes, routes);
    // A gateway that is gone loses only live pushes: its devices catch up from the log.
    await Promise.all(
      [...batches].map(([gatewayId, batch]) =>
        this.delivery.deliver(gatewayId, batch).catch((err: unknown) => {
          this.log.warn(
            { err, gatewayId, deliveries: batch.deliveries.length },
            "delivery to gateway failed",
          );
        }),
      ),
    );
  }

  /**
   * Hands the notification service a wake-up for every member device with no live route. Never
   * awaited by delivery: a slow or failing push path must not slow messages.
   */
  private wakeOffline(
    pushes: Array<{ entry: Entry; userIds: string[]; urgent: boolean }>,
    routes: Map<string, Array<{ deviceId: string; gatewayId: string }>>,
  ): void {
    const push = this.push;
    if (push === undefined) return;
    void (async () => {
      const users = new Set<string>();
      for (const p of pushes) for (const userId of p.userIds) users.add(userId);
      const devices = await this.devicesOf([...users], push.directory);
      // Each user's devices with no live route, found once per batch rather than once per entry:
      // usually none, and a group's entries each name the same 100 users.
      const offline = new Map<string, string[]>();
      for (const userId of users) {
        const live = routes.get(userId) ?? [];
        const off = (devices.get(userId) ?? []).filter((d) => !live.some((r) => r.deviceId === d));
        if (off.length > 0) offline.set(userId, off);
      }
      if (offline.size === 0) return;
      const wakeUps: Array<Omit<WakeUp, "$typeName">> = [];
      for (const p of pushes) {
        for (const userId of p.userIds) {
          for (const deviceId of offline.get(userId) ?? []) {
            wakeUps.push({
              userId,
              deviceId,
              conversationId: p.entry.conversationId,
              seq: p.entry.seq,
              urgent: p.urgent,
            });
          }
        }
      }
      if (wakeUps.length === 0) return;
      const { shed } = await push.notification.notify({ wakeUps });
      if (shed > 0) this.log.warn({ shed }, "push queue full: wake-ups shed (devices still sync on connect)");
    })().catch((err: unknown) => this.log.warn({ err }, "push hand-off failed"));
  }

  private async devicesOf(userIds: string[], directory: Client<typeof DirectoryService>) {
    const now = this.now();
    const out = new Map<string, string[]>();
    const missing: string[] = [];
    for (const id of userIds) {
      const cached = this.devices.get(id);
      if (cached !== undefined && now - cached.fetchedAt < PUSH_CACHE_MS) out.set(id, cached.deviceIds);
      else missing.push(id);
    }
    for (let i = 0; i < missing.length; i += LOOKUP_CHUNK) {
      const { users } = await directory.getUserDevices({ userIds: missing.slice(i, i + LOOKUP_CHUNK) });
      for (const u of users) {
        out.set(u.userId, u.deviceIds);
        this.devices.delete(u.userId);
        this.devices.set(u.userId, { deviceIds: u.deviceIds, fetchedAt: now });
      }
    }
    while (this.devices.size > DEVICE_CACHE) {
      const oldest = this.devices.keys().next().value;
      if (oldest === undefined) break;
      this.devices.delete(oldest);
    }
    return out;
  }

  /**
   * Fetches, MEMBER_FETCHES at a time, the member lists the batch's entries need and the cache
   * does not hold at their versions, each in the context of the first event that needs it; the
   * entries then find them cached, in order. A lookup that fails here is made again, and fails
   * the batch, in membersOf.
   */
  private async fetchMembers(events: readonly BusEvent[], traced: ReadonlyArray<Context | undefined>) {
    const needed = new Map<string, { version: number; mutesVersion: number; ctx: Context }>();
    for (const [i, { event }] of events.entries()) {
      if (event.case !== "entryCommitted" || event.value.entry === undefined) continue;
      const conversationId = event.value.entry.conversationId;
      const version = Number(event.value.membersVersion);
      const mutesVersion = Number(event.value.mutesVersion);
      if (this.cachedMembers(conversationId, version, mutesVersion) !== undefined) continue;
      const want = needed.get(conversationId);
      if (want === undefined)
        needed.set(conversationId, { version, mutesVersion, ctx: traced[i] ?? context.active() });
      else {
        want.version = Math.max(want.version, version);
        want.mutesVersion = Math.max(want.mutesVersion, mutesVersion);
      }
    }
    if (needed.size <= 1) return;
    // In the order of the batch's events, so the first entries' lists come first.
    const queue = [...needed];
    let taken = 0;
    const worker = async () => {
      for (let next = queue[taken++]; next !== undefined; next = queue[taken++]) {
        const [conversationId, { version, mutesVersion, ctx }] = next;
        await context.with(ctx, () => this.membersOf(conversationId, version, mutesVersion)).catch(() => {});
      }
    };
    await Promise.all(Array.from({ length: Math.min(MEMBER_FETCHES, queue.length) }, worker));
  }

  private cachedMembers(conversationId: string, version: number, mutesVersion: number): Members | undefined {
    const cached = this.members.get(conversationId);
    return cached !== undefined && cached.version >= version && cached.mutesVersion >= mutesVersion
      ? cached
      : undefined;
  }

  private async membersOf(conversationId: string, version: number, mutesVersion: number): Promise<Members> {
    const cached = this.cachedMembers(conversationId, version, mutesVersion);
    if (cached !== undefined) return cached;
    const fresh = await this.sequencer.getMembers({ conversationId });
    const members: Members = {
      version: Number(fresh.membersVersion),
      // Unique, so an entry's recipients can be this array as it is.
      userIds: [...new Set(fresh.userIds)],
      mutes: new Map(fresh.mutes.map((m) => [m.userId, Number(m.mutedUntilMs)])),
      mutesVersion: Number(fresh.mutesVersion),
    };
    // Lookups may overlap (a batch's own, the typing consumer's): an older answer that lands
    // last must not replace a newer one.
    const held = this.members.get(conversationId);
    if (held !== undefined && (held.version > members.version || held.mutesVersion > members.mutesVersion))
      return members;
    this.members.delete(conversationId);
    this.members.set(conversationId, members);
    if (this.members.size > MEMBER_CACHE) {
      const oldest = this.members.keys().next().value;
      if (oldest !== undefined) this.members.delete(oldest);
    }
    return members;
  }

  private async routesOf(userIds: string[]) {
    const byUser = new Map<string, Array<{ deviceId: string; gatewayId: string }>>();
    for (let i = 0; i < userIds.length; i += LOOKUP_CHUNK) {
      const { routes } = await this.presence.lookupRoutes({ userIds: userIds.slice(i, i + LOOKUP_CHUNK) });
      for (const r of routes) {
        const list = byUser.get(r.userId) ?? [];
        list.push({ deviceId: r.deviceId, gatewayId: r.gatewayId });
        byUser.set(r.userId, list);
      }
    }
    return byUser;
  }
}
