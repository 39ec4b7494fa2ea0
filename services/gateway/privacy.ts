import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { User } from "../../gen/switchboard/v1/accounts_pb.js";
import type { Member } from "../../gen/switchboard/v1/conversations_pb.js";
import { type ReceiptFrame, ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { audienceFromWire } from "../accounts/index.js";
import { BoundedCache } from "../common/bounded-cache.js";
import type { PrivacyAudience } from "../store/types.js";

/** Bounds of a gateway's cache of users' privacy settings. */
export interface PrivacyViewOptions {
  /** Users whose settings are kept at most (default 100,000). */
  maxUsers?: number;
  /** Bytes kept at most, counted as UTF-16 ids plus a fixed overhead each (default 16 MiB). */
  maxBytes?: number;
  /**
   * How long a copy is trusted without a PrivacyChanged, in milliseconds (default 5 minutes): the
   * bound on how long a gateway that missed a broadcast shows what a user has since hidden.
   */
  ttlMs?: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

/** The settings a gateway enforces on delivery. */
export interface DeliverySettings {
  /** Who sees the user's online state and last seen ("contacts": a direct conversation). */
  lastSeen: PrivacyAudience;
  /** Whether the user's read receipts reach others (and theirs reach the user). */
  readReceipts: boolean;
  /** Who sees the user's display name ("contacts": a direct conversation). */
  profile: PrivacyAudience;
}

interface Cached {
  settings: DeliverySettings;
  /** When it was read, in milliseconds since the Unix epoch. */
  readAtMs: number;
}

/** Users per DirectoryService.GetUserPrivacy call (its cap). */
const GET_PRIVACY_BATCH = 1024;

/** Whether an audience admits a peer: `direct` says whether the two have a direct conversation. */
function admits(audience: PrivacyAudience, direct: boolean): boolean {
  return audience === "everyone" || (audience === "contacts" && direct);
}

/**
 * Each gateway's copy of the privacy settings it enforces on what it delivers, read from
 * DirectoryService.GetUserPrivacy, bounded by users and bytes, least recently used out first
 * (common/bounded-cache.ts). A copy stays until a PrivacyChanged broadcast for its user drops it
 * (as BlockLists does for blocks), or at most ttlMs (a broadcast this gateway missed), so a
 * presence change or a receipt to a cached user costs no call.
 *
 * Both rules are reciprocal, and both fail closed (a frame whose settings cannot be read is
 * dropped: presence and receipts are ephemeral, and failing open would show them):
 * - last seen: a presence frame reaches a watcher only when each one's last_seen admits the
 *   other. A hidden user's frames are never sent, so the watcher sees what a user who blocked
 *   them shows (services/gateway/blocks.ts): an accepted, silent subscription.
 * - read receipts: a READ receipt reaches a member only when both the reader and that member
 *   have read receipts on; other members' read_up_to in GetConversation is masked the same way.
 */
export class PrivacyView {
  private readonly ttlMs: number;
  private readonly now: () => number;
  private readonly users: BoundedCache<string, Cached>;
  private readonly reads = new Map<string, Promise<DeliverySettings>>();
  /** Bumped by each change, so a read that raced one is not cached. */
  private generation = 0;

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    options: PrivacyViewOptions = {},
  ) {
    this.users = new BoundedCache(options.maxUsers ?? 100_000, options.maxBytes ?? 16 * 1024 * 1024);
    this.ttlMs = options.ttlMs ?? 5 * 60_000;
    this.now = options.now ?? Date.now;
  }

  /** Users whose settings are cached, and their bytes (for tests and metrics). */
  get size(): { users: number; bytes: number } {
    return { users: this.users.size, bytes: this.users.bytes };
  }

  /** Drops a user's settings (a PrivacyChanged broadcast). */
  changed(userId: string): void {
    this.generation++;
    this.users.delete(userId);
  }

  /** The user's settings, when cached and fresh (and then marked recently used). */
  cached(userId: string): DeliverySettings | undefined {
    const hit = this.users.get(userId);
    if (hit === undefined) return undefined;
    if (this.now() - hit.readAtMs > this.ttlMs) {
      this.users.delete(userId);
      return undefined;
    }
    return hit.settings;
  }

  /** The settings of users, read in calls of up to 1,024 for those not cached. */
  async of(userIds: readonly string[]): Promise<Map<string, DeliverySettings>> {
    const out = new Map<string, DeliverySettings>();
    const missing: string[] = [];
    for (const id of new Set(userIds)) {
      const hit = this.cached(id);
      if (hit !== undefined) out.set(id, hit);
      else missing.push(id);
    }
    // A few (a presence frame or a receipt: two users) share reads in flight, so frames waiting
    // on the same user are decided in the order they came.
    if (missing.length <= 8) {
      const read = await Promise.all(missing.map((id) => this.read(id)));
      for (const [i, id] of missing.entries()) out.set(id, read[i]!);
      return out;
    }
    for (let i = 0; i < missing.length; i += GET_PRIVACY_BATCH) {
      for (const [id, s] of await this.fetch(missing.slice(i, i + GET_PRIVACY_BATCH))) out.set(id, s);
    }
    return out;
  }

  /**
   * Calls deliver when `viewer` may see `owner`'s presence: both last_seen settings admit the
   * other (`direct`: they have a direct conversation). At once when both are cached.
   */
  presenceVisible(owner: string, viewer: string, direct: boolean, deliver: () => void): void {
    if (owner === viewer) {
      deliver();
      return;
    }
    const decide = (a: DeliverySettings, b: DeliverySettings) => {
      if (admits(a.lastSeen, direct) && admits(b.lastSeen, direct)) deliver();
    };
    const a = this.cached(owner);
    const b = this.cached(viewer);
    if (a !== undefined && b !== undefined) {
      decide(a, b);
      return;
    }
    this.of([owner, viewer]).then(
      (found) => decide(found.get(owner)!, found.get(viewer)!),
      () => {},
    );
  }

  /**
   * Calls deliver when `viewer` may see the receipt: delivered receipts always; read receipts
   * only when the reader and the viewer both have read receipts on.
   */
  receiptVisible(receipt: ReceiptFrame, viewer: string, deliver: () => void): void {
    if (receipt.kind !== ReceiptKind.READ || receipt.userId === viewer) {
      deliver();
      return;
    }
    const a = this.cached(receipt.userId);
    const b = this.cached(viewer);
    if (a !== undefined && b !== undefined) {
      if (a.readReceipts && b.readReceipts) deliver();
      return;
    }
    this.of([receipt.userId, viewer]).then(
      (found) => {
        if (found.get(receipt.userId)!.readReceipts && found.get(viewer)!.readReceipts) deliver();
      },
      () => {},
    );
  }

  /**
   * GetConversation's members as `viewer` may see them: another member's read_up_to is shown as
   * a member who has read nothing since joining (joined_seq - 1) unless both have read receipts
   * on. Delivered cursors are left alone. Rejects when the settings cannot be read (the caller's
   * answer is then an error, never the unmasked cursors).
   */
  async maskReadCursors(viewer: string, members: Member[]): Promise<void> {
    const others = members.filter((m) => m.userId !== viewer);
    if (others.length === 0) return;
    const found = await this.of([viewer, ...others.map((m) => m.userId)]);
    const mine = found.get(viewer)!.readReceipts;
    for (const m of others) {
      if (mine && found.get(m.userId)!.readReceipts) continue;
      const unread = m.joinedSeq > 0n ? m.joinedSeq - 1n : 0n;
      m.readUpTo = m.readUpTo < unread ? m.readUpTo : unread;
    }
  }

  /**
   * LookupUsers' answer as `viewer` may see it: a user whose `profile` setting does not admit the
   * viewer shows the username as display name, which is what a user who never chose one shows
   * (registration defaults the display name to the username). Not reciprocal. `directOf` says
   * which of some users have a direct conversation with the viewer (FindContacts; at most 256 ids,
   * LookupUsers' own cap). Rejects when the settings cannot be read: never the unmasked names.
   */
  async maskProfiles(
    viewer: string,
    users: User[],
    directOf: (userIds: string[]) => Promise<readonly string[]>,
  ): Promise<void> {
    const others = users.filter((u) => u.userId !== viewer);
    if (others.length === 0) return;
    const found = await this.of(others.map((u) => u.userId));
    const askDirect = others.filter((u) => found.get(u.userId)!.profile === "contacts").map((u) => u.userId);
    const direct = new Set(askDirect.length === 0 ? [] : await directOf(askDirect));
    for (const u of others) {
      if (!admits(found.get(u.userId)!.profile, direct.has(u.userId))) u.displayName = u.username;
    }
  }

  /** One user's settings, one read in flight per user. */
  private read(userId: string): Promise<DeliverySettings> {
    let read = this.reads.get(userId);
    if (read === undefined) {
      read = this.fetch([userId])
        .then((found) => found.get(userId)!)
        .finally(() => this.reads.delete(userId));
      this.reads.set(userId, read);
    }
    return read;
  }

  private async fetch(userIds: readonly string[]): Promise<Map<string, DeliverySettings>> {
    const generation = this.generation;
    const { users } = await this.directory.getUserPrivacy({ userIds: [...userIds] });
    const out = new Map<string, DeliverySettings>();
    for (const u of users) {
      const settings: DeliverySettings = {
        // The directory answers every setting in force; an unknown audience (a newer server's)
        // hides, as "nobody" would.
        lastSeen: audienceFromWire(u.settings?.lastSeen ?? 0) ?? "nobody",
        readReceipts: u.settings?.readReceipts ?? false,
        profile: audienceFromWire(u.settings?.profile ?? 0) ?? "nobody",
      };
      out.set(u.userId, settings);
      if (generation === this.generation) this.store(u.userId, settings);
    }
    for (const id of userIds) {
      if (!out.has(id)) throw new Error(`the directory did not answer for ${id}`);
    }
    return out;
  }

  private store(userId: string, settings: DeliverySettings): void {
    this.users.set(userId, { settings, readAtMs: this.now() }, userId.length * 2 + 96);
  }
}
