import { setImmediate as turn } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { BusEventSchema, PresenceChangedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import { PresenceFrameSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import type { EventBus } from "../bus/types.js";
import type { Logger } from "../common/log.js";
import type { Route, RouteStore, UserPresence } from "./types.js";

/**
 * Users one presence broadcast carries at most. When a gateway dies, every user whose only
 * streams it held goes offline in one sweep: 100,000 of them for a full gateway. Announced
 * together they were one task here (reading their state, building the events) and one on every
 * gateway that heard them; in batches, each batch is a task of its own, here and there.
 */
export const ANNOUNCE_BATCH = 512;

/** Options for the presence service. */
export interface PresenceOptions {
  /** How often expired routes are swept, in milliseconds. */
  sweepIntervalMs: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

/** Routes and online state, announcing every change of a user's presence to the gateways. */
export class Presence {
  private readonly now: () => number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly store: RouteStore,
    private readonly bus: EventBus,
    private readonly log: Logger,
    options: PresenceOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.sweeper = setInterval(() => {
      this.store
        .expire(this.now())
        .then((users) => this.announce(users))
        .catch((err: unknown) => this.log.warn({ err }, "route sweep failed"));
    }, options.sweepIntervalMs);
    this.sweeper.unref();
  }

  async register(routes: readonly Route[], ttlMs: number): Promise<void> {
    await this.announce(await this.store.register(routes, ttlMs, this.now()));
  }

  async unregister(routes: readonly Route[]): Promise<void> {
    await this.announce(await this.store.unregister(routes, this.now()));
  }

  lookup(userIds: readonly string[]): Promise<Route[]> {
    return this.store.lookup(userIds, this.now());
  }

  get(userIds: readonly string[]): Promise<UserPresence[]> {
    return this.store.presence(userIds, this.now());
  }

  close(): void {
    clearInterval(this.sweeper);
  }

  /**
   * Broadcasts each user's presence as it is when its batch is read, not the change that made it
   * due: a user who came back online while an earlier batch went out is announced online, so the
   * batches' order against other announcements does not matter.
   */
  private async announce(userIds: readonly string[]): Promise<void> {
    for (let i = 0; i < userIds.length; i += ANNOUNCE_BATCH) {
      if (i > 0) await turn();
      await this.broadcastPresence(userIds.slice(i, i + ANNOUNCE_BATCH));
    }
  }

  private async broadcastPresence(userIds: readonly string[]): Promise<void> {
    const states = await this.store.presence(userIds, this.now());
    this.bus.broadcast(
      states.map((p) =>
        create(BusEventSchema, {
          event: {
            case: "presenceChanged",
            value: create(PresenceChangedSchema, {
              presence: create(PresenceFrameSchema, {
                userId: p.userId,
                online: p.online,
                lastSeenMs: BigInt(p.lastSeenMs),
              }),
            }),
          },
        }),
      ),
    );
  }
}
