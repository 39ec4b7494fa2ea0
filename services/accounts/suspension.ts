import { create } from "@bufbuild/protobuf";
import { BusEventSchema, DeviceRevokedSchema } from "../../gen/switchboard/internal/v1/events_pb.js";
import type { EventBus } from "../bus/types.js";
import { ConflictError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { AccountStore, UserRecord } from "../store/types.js";

/** What Suspensions.suspend did. */
export interface Suspended {
  /** The user after the write (suspendedAtMs set; the first time when already suspended). */
  user: UserRecord;
  /** True if the user was suspended before the call. */
  alreadySuspended: boolean;
  /** Active devices whose streams gateways were told to close. */
  devicesClosed: number;
}

/**
 * Operator suspensions. A suspended user's devices count as inactive wherever a device's status
 * is checked (Accounts.getDevices: gateways, media, the accounts and key services), no token is
 * issued to them (PERMISSION_DENIED "account suspended"), and their open streams are closed by
 * the same broadcast as a revocation; unlike a revocation, nothing is deleted, so lifting the
 * suspension gives the user back every device, key, conversation and queued message.
 */
export class Suspensions {
  constructor(
    private readonly store: AccountStore,
    private readonly bus: EventBus,
    private readonly log: Logger,
    private readonly now: () => number,
  ) {}

  private setSuspended(): NonNullable<AccountStore["setSuspended"]> {
    const set = this.store.setSuspended?.bind(this.store);
    if (set === undefined) {
      // FAILED_PRECONDITION, not UNIMPLEMENTED: the service has the call, this deployment cannot.
      throw new ConflictError(
        "this store engine cannot suspend users yet (the embedded LMDB engine can; ScyllaDB has no column for it)",
      );
    }
    return set;
  }

  /** Suspends the user and closes their devices' streams; again on a suspended user, harmless. */
  async suspend(userId: string): Promise<Suspended> {
    const set = this.setSuspended();
    const before = await this.store.getUser(userId);
    if (before === undefined) throw new NotFoundError(`no user ${userId}`);
    const user = await set(userId, this.now());
    if (user === undefined) throw new NotFoundError(`no user ${userId}`);
    const active = (await this.store.listDevices(userId)).filter((d) => d.revokedAtMs === 0);
    // Sent again on a repeated suspension too, for a gateway that missed the first broadcast.
    if (active.length > 0) {
      this.bus.broadcast(
        active.map((d) =>
          create(BusEventSchema, {
            event: {
              case: "deviceRevoked",
              value: create(DeviceRevokedSchema, { userId, deviceId: d.deviceId }),
            },
          }),
        ),
      );
    }
    this.log.info({ userId, devices: active.length }, "user suspended");
    return { user, alreadySuspended: !!before.suspendedAtMs, devicesClosed: active.length };
  }

  /** Lifts the suspension; returns whether there was one. */
  async unsuspend(userId: string): Promise<{ user: UserRecord; wasSuspended: boolean }> {
    const set = this.setSuspended();
    const before = await this.store.getUser(userId);
    if (before === undefined) throw new NotFoundError(`no user ${userId}`);
    const user = before.suspendedAtMs ? await set(userId, 0) : before;
    if (user === undefined) throw new NotFoundError(`no user ${userId}`);
    if (before.suspendedAtMs) this.log.info({ userId }, "user suspension lifted");
    return { user, wasSuspended: !!before.suspendedAtMs };
  }

  /** Which of these users are suspended (unknown users are not). */
  async suspendedAmong(userIds: Iterable<string>): Promise<Set<string>> {
    const out = new Set<string>();
    // Engines without suspension have no suspended user: no reads.
    if (this.store.setSuspended === undefined) return out;
    const unique = [...new Set(userIds)];
    const users = await Promise.all(unique.map((id) => this.store.getUser(id)));
    for (const u of users) if (u?.suspendedAtMs) out.add(u.userId);
    return out;
  }
}
