import { create } from "@bufbuild/protobuf";
import { type Client, ConnectError } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import {
  type CheckedMember,
  CheckedMemberSchema,
  type SequencerService,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { DeviceCiphertext, Entry, OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type DeviceMismatch,
  DeviceMismatchSchema,
  type MismatchedDevice,
  MismatchedDeviceSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import { PermissionError, UnavailableError } from "../common/errors.js";
import {
  checkDevicePayloads,
  conversationKind,
  type DevicePayloadLimits,
  devicePayloadsOf,
  mismatchError,
  mismatchOf,
  needsDeviceCheck,
} from "../sequencer/index.js";

export { mismatchError, mismatchOf };

/** A user's active devices: device id -> registration id (0 when it has no keys). */
export type UserDevices = ReadonlyMap<string, number>;

/** The sending device. */
export interface Sender {
  /** The sender's user ("u_..."). */
  userId: string;
  /** The sending device ("dv_..."), which is never sent a ciphertext of its own send. */
  deviceId: string;
}

/** Options for the device-set check. */
export interface DeviceSetOptions extends DevicePayloadLimits {
  /** How long a user's device list is trusted for accepting a send, in milliseconds. */
  ttlMs?: number;
  /** Users whose device lists are kept at most (least recently used dropped first). */
  maxUsers?: number;
  /** Direct conversations whose two members are kept at most. */
  maxConversations?: number;
  /** Group member ids kept at most, over all groups (least recently read groups dropped first). */
  maxGroupMembers?: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

/** Users asked of the directory in one call at most. */
const LOOKUP_BATCH = 1024;

/**
 * Compares a send's ciphertexts with the devices that must get one: every active device with
 * keys of every member (the peer of a direct conversation, or a group's members; the sender is
 * one of them), except the sending device. Returns undefined when they match. Lists are sorted
 * by device id.
 */
export function compareDevices(
  sender: Sender,
  members: readonly string[],
  devices: ReadonlyMap<string, UserDevices>,
  payloads: readonly DeviceCiphertext[],
): DeviceMismatch | undefined {
  const expected = new Map<string, { userId: string; registrationId: number }>();
  for (const userId of new Set([...members, sender.userId])) {
    for (const [deviceId, registrationId] of devices.get(userId) ?? []) {
      if (registrationId !== 0 && deviceId !== sender.deviceId)
        expected.set(deviceId, { userId, registrationId });
    }
  }
  const missing: MismatchedDevice[] = [];
  const extra: MismatchedDevice[] = [];
  const stale: MismatchedDevice[] = [];
  const given = new Set<string>();
  for (const p of payloads) {
    given.add(p.deviceId);
    const want = expected.get(p.deviceId);
    if (want === undefined) extra.push(create(MismatchedDeviceSchema, { deviceId: p.deviceId }));
    else if (want.registrationId !== p.registrationId)
      stale.push(create(MismatchedDeviceSchema, { deviceId: p.deviceId, ...want }));
  }
  for (const [deviceId, want] of expected) {
    if (!given.has(deviceId)) missing.push(create(MismatchedDeviceSchema, { deviceId, ...want }));
  }
  if (missing.length + extra.length + stale.length === 0) return undefined;
  const byDevice = (a: MismatchedDevice, b: MismatchedDevice) => (a.deviceId < b.deviceId ? -1 : 1);
  return create(DeviceMismatchSchema, {
    missing: missing.sort(byDevice),
    extra: extra.sort(byDevice),
    stale: stale.sort(byDevice),
  });
}

/**
 * The members a group send was checked against, each with the devices it addresses (every
 * payload's device belongs to one of them once compareDevices found no mismatch).
 */
export function checkedMembers(
  sender: Sender,
  members: readonly string[],
  devices: ReadonlyMap<string, UserDevices>,
  payloads: readonly DeviceCiphertext[],
): CheckedMember[] {
  const addressed = new Set(payloads.map((p) => p.deviceId));
  return [...new Set([...members, sender.userId])].map((userId) =>
    create(CheckedMemberSchema, {
      userId,
      deviceIds: [...(devices.get(userId)?.keys() ?? [])].filter((id) => addressed.has(id)),
    }),
  );
}

/**
 * What each group send that passed the check was checked against, keyed by the entry check()
 * returned: the send batcher puts it in the AppendItem (AppendItem.checked_members), and the
 * sequencer shard refuses the send unless those are still the members when it assigns the seq.
 * Kept beside the entry rather than in it so that every path that appends a checked entry
 * carries it without changing what the check returns.
 */
const checkedBy = new WeakMap<OutgoingEntry, CheckedMember[]>();

/** The members a checked group send was checked against (empty for any other entry). */
export function checkedMembersOf(entry: OutgoingEntry): CheckedMember[] {
  return checkedBy.get(entry) ?? [];
}

/**
 * The entry as one device may see it: of the per-device ciphertexts, only its own (none for the
 * device that sent it). An entry without them is returned as is, not copied; one with them is
 * copied shallowly, since the same entry object goes to every stream.
 */
export function entryForDevice(entry: Entry, deviceId: string): Entry {
  const body = entry.body;
  switch (body.case) {
    case "message":
    case "edit":
    case "reaction": {
      const all = body.value.devicePayloads;
      if (all.length === 0) return entry;
      const own = all.filter((p) => p.deviceId === deviceId);
      // A spread keeps the union's case and value paired; TypeScript cannot follow it.
      const value = { ...body.value, devicePayloads: own } as typeof body.value;
      return { ...entry, body: { case: body.case, value } as Entry["body"] };
    }
    default:
      return entry;
  }
}

/**
 * The entry without the group ciphertexts left empty for devices that already hold the
 * sender's key: they carry nothing for anyone, so the log need not keep them. Returned as is
 * when there are none.
 */
export function withoutKeyHolders(entry: OutgoingEntry): OutgoingEntry {
  const body = entry.body;
  if (body.case !== "message" && body.case !== "edit" && body.case !== "reaction") return entry;
  if (body.value.devicePayloads.every((p) => p.ciphertext.length > 0)) return entry;
  const devicePayloads = body.value.devicePayloads.filter((p) => p.ciphertext.length > 0);
  // A spread keeps the union's case and value paired; TypeScript cannot follow it.
  const value = { ...body.value, devicePayloads } as typeof body.value;
  return { ...entry, body: { case: body.case, value } as OutgoingEntry["body"] };
}

interface Cached {
  devices: UserDevices;
  fetchedAt: number;
}

interface CachedGroup {
  members: readonly string[];
  fetchedAt: number;
}

interface Waiter {
  resolve: (devices: UserDevices | undefined) => void;
  reject: (err: unknown) => void;
}

/**
 * The gateway's check of sends with per-device ciphertexts (docs/encryption.md, "Per-device
 * ciphertexts and mismatched devices"): pairwise messages in direct conversations and sender
 * key distributions in groups. It keeps, per gateway, the two members of each direct
 * conversation (fixed for its life, so never refetched), each group's members, and each user's
 * active devices with their registration ids (DirectoryService.GetDeviceRegistrations). Group
 * members and devices are:
 *
 * - trusted for `ttlMs` (5 s) when they accept a send; devices are dropped at once when a
 *   revocation is broadcast, a group's members when a membership entry of it passes this gateway;
 * - read again before any refusal, so a device or member the sender already knows about is
 *   never refused because of this cache;
 * - for devices, fetched in one call per turn of the event loop for every user asked in it.
 */
export class DeviceSets {
  private readonly ttlMs: number;
  private readonly maxUsers: number;
  private readonly maxConversations: number;
  private readonly now: () => number;
  private readonly users = new Map<string, Cached>();
  private readonly maxGroupMembers: number;
  private readonly pairs = new Map<string, readonly [string, string]>();
  /** Reads of direct conversations' members in flight, and the user each is made as. */
  private readonly pairReads = new Map<
    string,
    { userId: string; read: Promise<readonly [string, string]> }
  >();
  private readonly groups = new Map<string, CachedGroup>();
  /** Member ids held in `groups`, for its bound. */
  private groupMembers = 0;
  private readonly groupReads = new Map<string, Promise<readonly string[]>>();
  private readonly inFlight = new Map<string, Promise<UserDevices | undefined>>();
  private queue = new Map<string, Waiter[]>();
  private scheduled = false;
  /** Bumped by each revocation; a read started before one does not fill the cache. */
  private generation = 0;
  /** Bumped by each membership change, for the same reason. */
  private groupGeneration = 0;

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly options: DeviceSetOptions,
  ) {
    this.ttlMs = options.ttlMs ?? 5000;
    this.maxUsers = options.maxUsers ?? 100_000;
    this.maxConversations = options.maxConversations ?? 100_000;
    this.maxGroupMembers = options.maxGroupMembers ?? 1_000_000;
    this.now = options.now ?? Date.now;
  }

  /**
   * Checks a send's per-device ciphertexts, or a group's sender-key message without any
   * (needsDeviceCheck). Undefined (nothing to wait for) for any other send, which keeps plain
   * sends synchronous; otherwise a promise of the entry to append (a
   * group's without the empty ciphertexts of key holders) that rejects with INVALID_ARGUMENT
   * for a malformed set, the sequencer's error for a non-member, or mismatchError() when the
   * set does not match.
   */
  check(sender: Sender, entry: OutgoingEntry): Promise<OutgoingEntry> | undefined {
    if (!needsDeviceCheck(entry.conversationId, entry.body)) return undefined;
    return this.verify(sender, entry, devicePayloadsOf(entry.body));
  }

  /** The two members of a direct conversation when this gateway knows them already. */
  knownPair(conversationId: string): readonly [string, string] | undefined {
    return this.pairs.get(conversationId);
  }

  /**
   * The two members of a direct conversation, read as the sender once per gateway (they never
   * change); PERMISSION_DENIED for a non-member, the sequencer's error for an unknown one.
   */
  directPair(sender: Sender, conversationId: string): Promise<readonly [string, string]> {
    return this.pair(sender, conversationId);
  }

  /** Forgets a user's devices (one of them was revoked). */
  deviceRevoked(userId: string): void {
    this.generation++;
    this.users.delete(userId);
  }

  /** Forgets a group's members (a membership entry of it was committed). */
  membershipChanged(conversationId: string): void {
    this.groupGeneration++;
    this.dropGroup(conversationId);
  }

  private async verify(
    sender: Sender,
    entry: OutgoingEntry,
    payloads: readonly DeviceCiphertext[],
  ): Promise<OutgoingEntry> {
    const kind = conversationKind(entry.conversationId);
    checkDevicePayloads(entry.body, kind, this.options, true);
    const id = entry.conversationId;
    let members: readonly string[] =
      kind === "direct" ? await this.pair(sender, id) : await this.group(sender, id, false);
    let devices = await this.devicesOf(members, false);
    if (compareDevices(sender, members, devices, payloads) !== undefined) {
      // Refused only on a fresh read of members (they change in groups) and devices alike.
      members = kind === "direct" ? members : await this.group(sender, id, true);
      devices = await this.devicesOf(members, true);
      const mismatch = compareDevices(sender, members, devices, payloads);
      if (mismatch !== undefined) throw mismatchError(mismatch);
    }
    if (kind === "direct") return entry;
    // A direct conversation's two members never change; a group's may have by the time the
    // send is ordered, which the shard checks against these.
    const checked = withoutKeyHolders(entry);
    checkedBy.set(checked, checkedMembers(sender, members, devices, payloads));
    return checked;
  }

  /**
   * A group's members, read as the sender, which the sequencer refuses unless they are a
   * member. From the cache unless `fresh`, or too old, or without the sender (who may have
   * been added since).
   */
  private async group(sender: Sender, conversationId: string, fresh: boolean): Promise<readonly string[]> {
    const cached = this.groups.get(conversationId);
    if (
      !fresh &&
      cached !== undefined &&
      this.now() - cached.fetchedAt <= this.ttlMs &&
      cached.members.includes(sender.userId)
    )
      return cached.members;
    if (!fresh) {
      const running = this.groupReads.get(conversationId);
      if (running !== undefined) {
        const members = await running;
        if (members.includes(sender.userId)) return members;
      }
    }
    const read = this.readGroup(sender, conversationId);
    this.groupReads.set(conversationId, read);
    const clear = () => {
      if (this.groupReads.get(conversationId) === read) this.groupReads.delete(conversationId);
    };
    read.then(clear, clear);
    return read;
  }

  private async readGroup(sender: Sender, conversationId: string): Promise<readonly string[]> {
    const generation = this.groupGeneration;
    const { members: list } = await this.sequencer.getConversation({
      userId: sender.userId,
      deviceId: sender.deviceId,
      conversationId,
    });
    const members = list.map((m) => m.userId);
    // A read that started before a membership change may hold the old members.
    if (generation === this.groupGeneration) {
      this.dropGroup(conversationId);
      this.groups.set(conversationId, { members, fetchedAt: this.now() });
      this.groupMembers += members.length;
      for (const key of this.groups.keys()) {
        if (this.groupMembers <= this.maxGroupMembers || key === conversationId) break;
        this.dropGroup(key);
      }
    }
    return members;
  }

  private dropGroup(conversationId: string): void {
    const cached = this.groups.get(conversationId);
    if (cached === undefined) return;
    this.groups.delete(conversationId);
    this.groupMembers -= cached.members.length;
  }

  /** The two members of a direct conversation, checking that the sender is one of them. */
  private async pair(sender: Sender, conversationId: string): Promise<readonly [string, string]> {
    const pair = this.pairs.get(conversationId) ?? (await this.readPair(sender, conversationId));
    if (pair[0] !== sender.userId && pair[1] !== sender.userId)
      throw new PermissionError("not a member of this conversation");
    return pair;
  }

  /**
   * A direct conversation's members from the sequencer, one read however many sends wait for
   * them: a cold gateway, whose devices all send at once, asked once a send, ten times as many
   * reads as conversations, a sixth of its work in its first seconds (docs/benchmarks.md,
   * forty-third pass). A read made as another user that failed says nothing of this sender (the sequencer
   * refuses a non-member), so the sender then reads as itself.
   */
  private readPair(sender: Sender, conversationId: string): Promise<readonly [string, string]> {
    const running = this.pairReads.get(conversationId);
    if (running === undefined) return this.pairAs(sender, conversationId);
    if (running.userId === sender.userId) return running.read;
    return running.read.catch(() => this.pairAs(sender, conversationId));
  }

  private pairAs(sender: Sender, conversationId: string): Promise<readonly [string, string]> {
    const read = (async () => {
      // The sequencer refuses a non-member (PERMISSION_DENIED) or an unknown conversation.
      const { members } = await this.sequencer.getConversation({
        userId: sender.userId,
        deviceId: sender.deviceId,
        conversationId,
      });
      const ids = members.map((m) => m.userId);
      const pair = [ids[0] ?? "", ids[1] ?? ids[0] ?? ""] as const;
      this.pairs.set(conversationId, pair);
      trim(this.pairs, this.maxConversations);
      return pair;
    })();
    this.pairReads.set(conversationId, { userId: sender.userId, read });
    const clear = () => {
      if (this.pairReads.get(conversationId)?.read === read) this.pairReads.delete(conversationId);
    };
    read.then(clear, clear);
    return read;
  }

  /** Users' device lists, from the cache unless `fresh`. */
  private async devicesOf(userIds: readonly string[], fresh: boolean): Promise<Map<string, UserDevices>> {
    const now = this.now();
    const out = new Map<string, UserDevices>();
    const reads: Array<Promise<void>> = [];
    for (const userId of new Set(userIds)) {
      const cached = this.users.get(userId);
      if (!fresh && cached !== undefined && now - cached.fetchedAt <= this.ttlMs) {
        out.set(userId, cached.devices);
        continue;
      }
      reads.push(
        this.fetch(userId, fresh).then((devices) => {
          if (devices !== undefined) out.set(userId, devices);
        }),
      );
    }
    await Promise.all(reads);
    return out;
  }

  /**
   * One user's devices from the directory, joining a read already in flight unless `fresh`
   * (a fresh read must start after the caller's cached view was found wanting).
   */
  private fetch(userId: string, fresh: boolean): Promise<UserDevices | undefined> {
    const running = fresh ? undefined : this.inFlight.get(userId);
    if (running !== undefined) return running;
    const read = new Promise<UserDevices | undefined>((resolve, reject) => {
      const waiters = this.queue.get(userId) ?? [];
      waiters.push({ resolve, reject });
      this.queue.set(userId, waiters);
    });
    this.inFlight.set(userId, read);
    const clear = () => {
      if (this.inFlight.get(userId) === read) this.inFlight.delete(userId);
    };
    read.then(clear, clear);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
    return read;
  }

  private flush(): void {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = new Map();
    const ids = [...queue.keys()];
    for (let i = 0; i < ids.length; i += LOOKUP_BATCH)
      void this.lookup(ids.slice(i, i + LOOKUP_BATCH), queue);
  }

  private async lookup(userIds: string[], queue: Map<string, Waiter[]>): Promise<void> {
    const generation = this.generation;
    try {
      const { users } = await this.directory.getDeviceRegistrations({ userIds });
      const found = new Map<string, UserDevices>();
      for (const u of users)
        found.set(u.userId, new Map(u.devices.map((d) => [d.deviceId, d.registrationId])));
      const at = this.now();
      for (const userId of userIds) {
        const devices = found.get(userId);
        if (devices !== undefined && generation === this.generation) {
          this.users.delete(userId);
          this.users.set(userId, { devices, fetchedAt: at });
        }
        for (const w of queue.get(userId) ?? []) w.resolve(devices);
      }
      trim(this.users, this.maxUsers);
    } catch (err) {
      // The directory's answer (this is its client), named in the refusal.
      const e = ConnectError.from(err);
      const failed = new UnavailableError(`could not read the devices' keys: ${e.rawMessage}`);
      for (const userId of userIds) for (const w of queue.get(userId) ?? []) w.reject(failed);
    }
  }
}

/** Keeps a map within bounds by dropping its oldest entries (insertion order). */
function trim<V>(map: Map<string, V>, max: number): void {
  for (const key of map.keys()) {
    if (map.size <= max) return;
    map.delete(key);
  }
}
