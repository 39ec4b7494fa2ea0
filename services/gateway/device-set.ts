import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { DeviceCiphertext, Entry, OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type DeviceMismatch,
  DeviceMismatchSchema,
  type MismatchedDevice,
  MismatchedDeviceSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";
import {
  checkDevicePayloads,
  type DevicePayloadLimits,
  devicePayloadsOf,
} from "../sequencer/device-payloads.js";

/** A user's active devices: device id -> registration id (0 when it has no keys). */
export type UserDevices = ReadonlyMap<string, number>;

/** The sending device. */
export interface Sender {
  userId: string;
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
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

/** Users asked of the directory in one call at most. */
const LOOKUP_BATCH = 1024;

/**
 * Compares a send's ciphertexts with the devices that must get one: every active device with
 * keys of the peer, and of the sender except the sending device. Returns undefined when they
 * match. Lists are sorted by device id.
 */
export function compareDevices(
  sender: Sender,
  peerUserId: string,
  devices: ReadonlyMap<string, UserDevices>,
  payloads: readonly DeviceCiphertext[],
): DeviceMismatch | undefined {
  const expected = new Map<string, { userId: string; registrationId: number }>();
  for (const userId of [peerUserId, sender.userId]) {
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
 * The refusal of a mismatched send: FAILED_PRECONDITION naming the devices, with the lists as
 * a DeviceMismatch error detail (the stream copies it into SendErrorFrame.mismatch).
 */
export function mismatchError(mismatch: DeviceMismatch): ConnectError {
  const named = (list: MismatchedDevice[]) =>
    list.map((d) => (d.userId === "" ? d.deviceId : `${d.deviceId} (${d.userId})`)).join(", ");
  const parts: string[] = [];
  if (mismatch.missing.length > 0) parts.push(`missing ${named(mismatch.missing)}`);
  if (mismatch.extra.length > 0) parts.push(`extra ${named(mismatch.extra)}`);
  if (mismatch.stale.length > 0) parts.push(`stale ${named(mismatch.stale)}`);
  return new ConnectError(
    `device_payloads do not match the conversation's devices: ${parts.join("; ")}. ` +
      "Add the missing, drop the extra, re-key the stale, and retry with the same client_msg_id",
    Code.FailedPrecondition,
    undefined,
    [{ desc: DeviceMismatchSchema, value: mismatch }],
  );
}

/** The DeviceMismatch an error carries, if any. */
export function mismatchOf(error: ConnectError): DeviceMismatch | undefined {
  return error.code === Code.FailedPrecondition ? error.findDetails(DeviceMismatchSchema)[0] : undefined;
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

interface Cached {
  devices: UserDevices;
  fetchedAt: number;
}

interface Waiter {
  resolve: (devices: UserDevices | undefined) => void;
  reject: (err: unknown) => void;
}

/**
 * The gateway's check of pairwise sends (docs/encryption.md, "Per-device ciphertexts and
 * mismatched devices"). It keeps, per gateway, the two members of each direct conversation
 * (fixed for its life, so never refetched) and each user's active devices with their
 * registration ids (DirectoryService.GetDeviceRegistrations), which are:
 *
 * - trusted for `ttlMs` (5 s) when they accept a send, and dropped at once when a revocation
 *   is broadcast;
 * - read again before any refusal, so a device the sender already knows about is never
 *   refused because of this cache;
 * - fetched in one call per turn of the event loop for every user asked in it.
 */
export class DeviceSets {
  private readonly ttlMs: number;
  private readonly maxUsers: number;
  private readonly maxConversations: number;
  private readonly now: () => number;
  private readonly users = new Map<string, Cached>();
  private readonly pairs = new Map<string, readonly [string, string]>();
  private readonly inFlight = new Map<string, Promise<UserDevices | undefined>>();
  private queue = new Map<string, Waiter[]>();
  private scheduled = false;
  /** Bumped by each revocation; a read started before one does not fill the cache. */
  private generation = 0;

  constructor(
    private readonly directory: Client<typeof DirectoryService>,
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly options: DeviceSetOptions,
  ) {
    this.ttlMs = options.ttlMs ?? 5000;
    this.maxUsers = options.maxUsers ?? 100_000;
    this.maxConversations = options.maxConversations ?? 100_000;
    this.now = options.now ?? Date.now;
  }

  /**
   * Checks a send's per-device ciphertexts. Undefined (nothing to wait for) when the entry has
   * none, which keeps plain sends synchronous; otherwise a promise that rejects with
   * INVALID_ARGUMENT for a malformed set, the sequencer's error for a non-member, or
   * mismatchError() when the set does not match.
   */
  check(sender: Sender, entry: OutgoingEntry): Promise<void> | undefined {
    const payloads = devicePayloadsOf(entry.body);
    if (payloads.length === 0) return undefined;
    return this.verify(sender, entry, payloads);
  }

  /** Forgets a user's devices (one of them was revoked). */
  deviceRevoked(userId: string): void {
    this.generation++;
    this.users.delete(userId);
  }

  private async verify(sender: Sender, entry: OutgoingEntry, payloads: readonly DeviceCiphertext[]) {
    checkDevicePayloads(entry.body, this.options);
    if (!entry.conversationId.startsWith("d_")) {
      throw new ConnectError(
        "device_payloads: only in direct conversations; a group message carries one payload",
        Code.InvalidArgument,
      );
    }
    const [a, b] = await this.members(sender, entry.conversationId);
    const peer = a === sender.userId ? b : a;
    const cached = await this.devicesOf([sender.userId, peer], false);
    if (compareDevices(sender, peer, cached, payloads) === undefined) return;
    const fresh = await this.devicesOf([sender.userId, peer], true);
    const mismatch = compareDevices(sender, peer, fresh, payloads);
    if (mismatch !== undefined) throw mismatchError(mismatch);
  }

  /** The two members of a direct conversation, checking that the sender is one of them. */
  private async members(sender: Sender, conversationId: string): Promise<readonly [string, string]> {
    let pair = this.pairs.get(conversationId);
    if (pair === undefined) {
      // The sequencer refuses a non-member (PERMISSION_DENIED) or an unknown conversation.
      const { members } = await this.sequencer.getConversation({
        userId: sender.userId,
        deviceId: sender.deviceId,
        conversationId,
      });
      const ids = members.map((m) => m.userId);
      pair = [ids[0] ?? "", ids[1] ?? ids[0] ?? ""] as const;
      this.pairs.set(conversationId, pair);
      trim(this.pairs, this.maxConversations);
    }
    if (pair[0] !== sender.userId && pair[1] !== sender.userId)
      throw new ConnectError("not a member of this conversation", Code.PermissionDenied);
    return pair;
  }

  /** Users' device lists, from the cache unless `fresh`. */
  private async devicesOf(userIds: string[], fresh: boolean): Promise<Map<string, UserDevices>> {
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
      const e = ConnectError.from(err);
      const failed = new ConnectError(`could not read the devices' keys: ${e.rawMessage}`, Code.Unavailable);
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
