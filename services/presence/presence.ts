import { create } from "@bufbuild/protobuf";
import { BusEventSchema, PresenceChangedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import { PresenceFrameSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import type { EventBus } from "../bus/types.js";
import type { Logger } from "../common/log.js";
import type { Route, RouteStore, UserPresence } from "./types.js";

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

  private async announce(userIds: readonly string[]): Promise<void> {
    if (userIds.length === 0) return;
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
