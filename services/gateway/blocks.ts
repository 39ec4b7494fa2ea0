import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { BoundedCache } from "../common/bounded-cache.js";
import { PermissionError } from "../common/errors.js";
import { conversationKind } from "../sequencer/index.js";
import type { DeviceSets, Sender } from "./device-set.js";

/**
 * The refusal of a direct send to a user who blocked the sender. It does not say "blocked": the
 * sender learns that this message was not accepted, which is what WhatsApp's lone tick tells a
 * blocked sender in the end (docs/protocol.md, "Blocking and reporting").
 */
export const NOT_ACCEPTED = "message not accepted: the recipient does not accept messages from you here";

/** Bounds of a gateway's cache of users' block lists. */
export interface BlockListOptions {
  /** Users whose lists are kept at most (default 50,000). */
  maxUsers?: number;
  /** Bytes of user ids kept at most, counted as UTF-16 (default 16 MiB). */
  maxBytes?: number;
}

const EMPTY: ReadonlySet<string> = new Set();

/** Users per DirectoryService.GetBlockedUsers call (its cap). */
const GET_BLOCKED_BATCH = 256;

/**
 * Each gateway's copy of the block lists it needs (DirectoryService.GetBlockedUsers), bounded by
 * users and bytes, least recently used out first (common/bounded-cache.ts). A list stays until
 * a BlocksChanged broadcast for its user drops it (the path revocations take), so a direct send
 * whose recipient's list is cached costs no call at all. A read started before a change does
 * not fill the cache.
 *
 * What it enforces, on behalf of the user who blocked (the owner of a list):
 * - direct sends from a blocked user are refused (`checkDirectSend`);
 * - the owner's presence and typing never reach a blocked user's streams (`unlessBlocked`);
 * - group adds and new direct conversations are refused as the owner's privacy settings would
 *   refuse them (services/gateway/consent.ts asks `blockedAmong`).
 */
export class BlockLists {
  private readonly lists: BoundedCache<string, ReadonlySet<string>>;
  private readonly reads = new Map<string, Promise<ReadonlySet<string>>>();
  /** Owners asked for in this turn and not cached, with what each read waits for. */
  private readonly asked = new Map<
    string,
    { generation: number; resolve: (ids: ReadonlySet<string>) => void; reject: (err: unknown) => void }
  >();
  private readScheduled = false;
  /** Bumped by each change, so a read that raced one is not cached. */
  private generation = 0;

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    options: BlockListOptions = {},
  ) {
    this.lists = new BoundedCache(options.maxUsers ?? 50_000, options.maxBytes ?? 16 * 1024 * 1024);
  }

  /** Users whose lists are cached, and their bytes (for tests and metrics). */
  get size(): { users: number; bytes: number } {
    return { users: this.lists.size, bytes: this.lists.bytes };
  }

  /** Drops a user's list (a BlocksChanged broadcast). */
  changed(userId: string): void {
    this.generation++;
    this.lists.delete(userId);
  }

  /** The users `owner` blocked, when cached (and then marked recently used). */
  cached(owner: string): ReadonlySet<string> | undefined {
    return this.lists.get(owner);
  }

  /**
   * The users `owner` blocked. Lists not cached are read together at the end of the turn, in
   * calls of up to 256 users: a cold gateway, whose devices all send at once, made one call an
   * owner, 500 at once, each a call on both sides (docs/benchmarks.md, forty-third pass).
   */
  listOf(owner: string): Promise<ReadonlySet<string>> {
    const hit = this.cached(owner);
    if (hit !== undefined) return Promise.resolve(hit);
    let read = this.reads.get(owner);
    if (read === undefined) {
      const generation = this.generation;
      read = new Promise<ReadonlySet<string>>((resolve, reject) => {
        this.asked.set(owner, { generation, resolve, reject });
      }).finally(() => this.reads.delete(owner));
      this.reads.set(owner, read);
      if (!this.readScheduled) {
        this.readScheduled = true;
        setImmediate(() => this.readAsked());
      }
    }
    return read;
  }

  /**
   * Which of `owners` have blocked `userId`, in the order given. Lists not cached are read in
   * calls of up to 256 users (a group add names up to 1,024).
   */
  async blockedAmong(owners: readonly string[], userId: string): Promise<string[]> {
    const missing = [...new Set(owners)].filter((o) => this.cached(o) === undefined && !this.reads.has(o));
    const generation = this.generation;
    const fetched = new Map<string, ReadonlySet<string>>();
    for (let i = 0; i < missing.length; i += GET_BLOCKED_BATCH) {
      const { users } = await this.directory.getBlockedUsers({
        userIds: missing.slice(i, i + GET_BLOCKED_BATCH),
      });
      for (const u of users) {
        const ids: ReadonlySet<string> = new Set(u.blockedUserIds);
        fetched.set(u.userId, ids);
        if (generation === this.generation) this.store(u.userId, ids);
      }
    }
    const lists = await Promise.all(owners.map((o) => fetched.get(o) ?? this.listOf(o)));
    return owners.filter((_, i) => lists[i]!.has(userId));
  }

  /** Reads the lists asked for in the turn that has ended. */
  private readAsked(): void {
    this.readScheduled = false;
    const asked = [...this.asked];
    this.asked.clear();
    for (let i = 0; i < asked.length; i += GET_BLOCKED_BATCH) {
      const batch = asked.slice(i, i + GET_BLOCKED_BATCH);
      this.directory.getBlockedUsers({ userIds: batch.map(([owner]) => owner) }).then(
        ({ users }) => {
          const answered = new Map(users.map((u) => [u.userId, u.blockedUserIds]));
          for (const [owner, waiter] of batch) {
            const ids: ReadonlySet<string> = new Set(answered.get(owner) ?? []);
            // A read asked for before a change may hold the list before it.
            if (waiter.generation === this.generation) this.store(owner, ids);
            waiter.resolve(ids);
          }
        },
        (err: unknown) => {
          for (const [, waiter] of batch) waiter.reject(err);
        },
      );
    }
  }

  /**
   * Calls deliver unless `owner` blocked `viewer`: at once when the owner's list is cached,
   * otherwise once it is read. A list that cannot be read drops the frame (presence and typing
   * are ephemeral; failing open would show them to a blocked user).
   */
  unlessBlocked(owner: string, viewer: string, deliver: () => void): void {
    if (owner === viewer) {
      deliver();
      return;
    }
    const hit = this.cached(owner);
    if (hit !== undefined) {
      if (!hit.has(viewer)) deliver();
      return;
    }
    this.listOf(owner).then(
      (ids) => {
        if (!ids.has(viewer)) deliver();
      },
      () => {},
    );
  }

  /**
   * Calls deliver unless the typing user blocked the viewer (anywhere), or the viewer blocked the
   * typing user and the conversation is direct (their messages cannot arrive there either; in a
   * shared group they do, and so does their typing).
   */
  typingVisible(
    typing: { userId: string; conversationId: string },
    viewer: string,
    deliver: () => void,
  ): void {
    this.unlessBlocked(typing.userId, viewer, () => {
      if (conversationKind(typing.conversationId) !== "direct") deliver();
      else this.unlessBlocked(viewer, typing.userId, deliver);
    });
  }

  /**
   * Undefined (nothing to wait for) when the send may go on at once: a group send, or a direct
   * one whose members and recipient's list are cached and admit it. Otherwise a promise that
   * rejects with NOT_ACCEPTED (PERMISSION_DENIED) when the recipient blocked the sender, or with
   * the sequencer's error for a non-member.
   */
  checkDirectSend(devices: DeviceSets, sender: Sender, entry: OutgoingEntry): Promise<void> | undefined {
    const id = entry.conversationId;
    if (conversationKind(id) !== "direct") return undefined;
    const pair = devices.knownPair(id);
    if (pair !== undefined && (pair[0] === sender.userId || pair[1] === sender.userId)) {
      const peer = pair[0] === sender.userId ? pair[1] : pair[0];
      const hit = peer === sender.userId ? EMPTY : this.cached(peer);
      if (hit !== undefined) {
        return hit.has(sender.userId) ? Promise.reject(new PermissionError(NOT_ACCEPTED)) : undefined;
      }
    }
    return (async () => {
      const [a, b] = await devices.directPair(sender, id);
      const peer = a === sender.userId ? b : a;
      if (peer !== sender.userId && (await this.listOf(peer)).has(sender.userId)) {
        throw new PermissionError(NOT_ACCEPTED);
      }
    })();
  }

  /**
   * The block check and then the device-set check of a send (DeviceSets.check): undefined when
   * neither needs waiting for, which keeps plain sends synchronous.
   */
  checkSend(devices: DeviceSets, sender: Sender, entry: OutgoingEntry): Promise<OutgoingEntry> | undefined {
    const blocked = this.checkDirectSend(devices, sender, entry);
    if (blocked === undefined) return devices.check(sender, entry);
    return blocked.then(() => devices.check(sender, entry) ?? entry);
  }

  private store(owner: string, ids: ReadonlySet<string>): void {
    let bytes = owner.length * 2 + 64;
    for (const id of ids) bytes += id.length * 2 + 32;
    // A list larger than the whole budget is not kept (it is read again each time).
    this.lists.set(owner, ids, bytes);
  }
}
