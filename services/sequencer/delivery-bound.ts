import { shardOf } from "../common/shard.js";
import type { AccountStore, ConversationStore, MemberRecord, ReceivedUpTo } from "../store/types.js";

/** Conversations whose bound is remembered at most; the least recently swept are forgotten. */
const MAX_REMEMBERED = 100_000;

/** Users (and devices) whose directory reads one sweep keeps at most before starting afresh. */
const MAX_CACHED = 10_000;

/** Device ids asked for in one cursor read. */
const CURSOR_READ = 100;

/**
 * Per conversation, the seq up to which every active device of every member had received the
 * log when the expiry sweep last looked (DeviceDeliveryBound). The log serves entries up to it as
 * expired once they are past the window after delivery, as the sweep deletes them. Bounded: a
 * forgotten conversation reads 0 (nothing served as expired early), which only means its
 * entries read as expired when the sweep deletes them rather than a moment before.
 */
export class ReceivedBounds {
  private readonly bySeq = new Map<string, number>();

  constructor(private readonly max = MAX_REMEMBERED) {}

  /** The last bound found for the conversation; 0 when none is remembered. */
  get(conversationId: string): number {
    return this.bySeq.get(conversationId) ?? 0;
  }

  /** Records a bound; a conversation's bound only moves forward. */
  set(conversationId: string, seq: number): void {
    const before = this.bySeq.get(conversationId) ?? 0;
    // Delete then set: Map order is recency, the trim forgets the least recently swept first.
    this.bySeq.delete(conversationId);
    this.bySeq.set(conversationId, Math.max(before, seq));
    if (this.bySeq.size > this.max) {
      const oldest = this.bySeq.keys().next();
      if (!oldest.done) this.bySeq.delete(oldest.value);
    }
  }
}

/**
 * What retention after delivery may delete: the entries every active (not revoked) device of
 * every member has received, by the device cursors the sequencer saves on acks. The sequencer
 * does not hold device lists, which belong to the accounts directory, and reading them on every
 * ack would put a directory read on the hot path; so the background sweep reads them, once per
 * user and sweep, and records what it found in ReceivedBounds for the log's reads.
 *
 * A device counts from where it could read: its cursor, else where it started (its member's
 * join, or its own link floor), so a device linked or a member added later does not hold back
 * what it was never meant to receive. A device that never comes back holds entries back until
 * the server-wide retention (SWITCHBOARD_RETENTION_SECONDS) deletes them anyway; revoking it
 * releases them at the next sweep.
 */
export class DeviceDeliveryBound {
  /** Active device ids by user, read once per sweep. */
  private readonly devices = new Map<string, string[]>();
  /** Link floors by device (conversation id -> seq), read once per sweep. */
  private readonly floors = new Map<string, Map<string, number>>();

  constructor(
    private readonly store: Pick<ConversationStore, "getDeviceCursors" | "listDeviceFloors">,
    private readonly accounts: Pick<AccountStore, "listDevices">,
    private readonly bounds: ReceivedBounds,
    /**
     * Whether this replica holds the conversation's shard now. Every replica of a shared store
     * (ScyllaDB) walks every conversation; only the holder reads its devices and deletes, so the
     * replicas do not all repeat the same reads and deletes. Absent: every conversation.
     */
    private readonly holds?: (conversationId: string) => boolean,
  ) {}

  /** Forgets the directory reads of the last sweep: links and revocations since then count. */
  startSweep(): void {
    this.devices.clear();
    this.floors.clear();
  }

  /** The store's ReceivedUpTo: also recorded in ReceivedBounds for the log's reads. */
  readonly receivedUpTo: ReceivedUpTo = async (conversationId, members) => {
    // Another replica's conversation: it sweeps it (a bound of 0 deletes nothing here).
    if (this.holds !== undefined && !this.holds(conversationId)) return 0;
    const bound = await this.compute(conversationId, members);
    if (Number.isFinite(bound)) this.bounds.set(conversationId, bound);
    return bound;
  };

  private async compute(conversationId: string, members: readonly MemberRecord[]): Promise<number> {
    const owners = new Map<string, MemberRecord>();
    for (const m of members) {
      for (const deviceId of await this.activeDevices(m.userId)) owners.set(deviceId, m);
    }
    // Nobody left to receive anything (no members, or none with a device): nothing to keep.
    if (owners.size === 0) return Number.POSITIVE_INFINITY;
    const ids = [...owners.keys()];
    const delivered = new Map<string, number>();
    for (let i = 0; i < ids.length; i += CURSOR_READ) {
      for (const c of await this.store.getDeviceCursors(conversationId, ids.slice(i, i + CURSOR_READ))) {
        delivered.set(c.deviceId, c.deliveredUpTo);
      }
    }
    let low = Number.POSITIVE_INFINITY;
    for (const [deviceId, member] of owners) {
      const floor = (await this.floorsOf(deviceId)).get(conversationId) ?? 0;
      const start = Math.max(member.joinedSeq - 1, floor);
      low = Math.min(low, Math.max(delivered.get(deviceId) ?? 0, start));
      if (low <= 0) return 0;
    }
    return low;
  }

  private async activeDevices(userId: string): Promise<string[]> {
    let ids = this.devices.get(userId);
    if (ids === undefined) {
      if (this.devices.size >= MAX_CACHED) this.devices.clear();
      ids = (await this.accounts.listDevices(userId))
        .filter((d) => d.revokedAtMs === 0)
        .map((d) => d.deviceId);
      this.devices.set(userId, ids);
    }
    return ids;
  }

  private async floorsOf(deviceId: string): Promise<Map<string, number>> {
    let floors = this.floors.get(deviceId);
    if (floors === undefined) {
      if (this.floors.size >= MAX_CACHED) this.floors.clear();
      floors = await this.store.listDeviceFloors(deviceId);
      this.floors.set(deviceId, floors);
    }
    return floors;
  }
}

/**
 * Whether a sequencer replica holds a conversation's shard now; false while it holds none (a
 * replica starting or fenced refuses to say which it holds).
 */
export function holdsConversation(
  sequencer: { heldShards(): ReadonlySet<number> },
  conversationId: string,
  shardCount: number,
): boolean {
  try {
    return sequencer.heldShards().has(shardOf(conversationId, shardCount));
  } catch {
    return false;
  }
}
