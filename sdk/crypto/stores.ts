import { createHash, randomInt } from "node:crypto";
import { join } from "node:path";
import {
  type Direction,
  IdentityChange,
  IdentityKeyPair,
  IdentityKeyStore,
  KyberPreKeyRecord,
  KyberPreKeyStore,
  PreKeyRecord,
  PreKeyStore,
  type PrivateKey,
  ProtocolAddress,
  PublicKey,
  SenderKeyRecord,
  SenderKeyStore,
  SessionRecord,
  SessionStore,
  SignedPreKeyRecord,
  SignedPreKeyStore,
  type Uuid,
} from "@signalapp/libsignal-client";
import { ensureDir, JsonDoc, RecordDir, toBytes } from "./files.js";

/**
 * The libsignal device number of every address. libsignal wants a number from 1 to 127 per
 * device, our device ids are strings ("dv_..."), and a user may have more devices over time than
 * 127. So each of our devices is its own libsignal "name" (`<userId>.<deviceId>`, see addressOf)
 * with device number 1: sessions, identities and sender keys are then kept per device exactly as
 * libsignal keeps them per address, and no numbering table has to be kept in sync across devices.
 */
export const SIGNAL_DEVICE_NUMBER = 1;

/** One device of one user, by the server's ids. */
export interface DeviceRef {
  /** The user ("u_..."). */
  userId: string;
  /** The device ("dv_..."). */
  deviceId: string;
}

/** The libsignal address of one of our devices: name `<userId>.<deviceId>`, device number 1. */
export function addressOf(device: DeviceRef): ProtocolAddress {
  if (device.userId.includes(".") || device.userId === "" || device.deviceId === "") {
    throw new Error(`cannot address device ${device.deviceId} of user ${device.userId}`);
  }
  return ProtocolAddress.new(`${device.userId}.${device.deviceId}`, SIGNAL_DEVICE_NUMBER);
}

/** The device a libsignal address stands for (the inverse of addressOf). */
export function deviceOf(address: ProtocolAddress): DeviceRef {
  const name = address.name();
  const dot = name.indexOf(".");
  if (dot <= 0 || dot === name.length - 1) throw new Error(`not a Switchboard address: ${name}`);
  return { userId: name.slice(0, dot), deviceId: name.slice(dot + 1) };
}

/** Why an IdentityChangeEvent fired. */
export type IdentityChangeOutcome =
  /** A contact that was not verified presented a new key; it replaced the old one. */
  | "accepted"
  /** A verified contact presented a new key; it was refused, nothing was sent or decrypted. */
  | "refused";

/** A device of a contact presented an identity key different from the one we remembered. */
export interface IdentityChangeEvent {
  /** The device whose identity changed. */
  device: DeviceRef;
  /** The key we remembered. */
  previousKey: PublicKey;
  /** The key now presented. */
  newKey: PublicKey;
  /** Whether the contact's device was verified (safety number compared) with the previous key. */
  wasVerified: boolean;
  /** What the store did about it. */
  outcome: IdentityChangeOutcome;
}

/** What we remember about another device's identity. */
export interface RememberedIdentity {
  /** Its identity public key. */
  key: PublicKey;
  /** True once the user compared safety numbers for this key. */
  verified: boolean;
  /** When we first saw this key, in milliseconds since the Unix epoch. */
  firstSeenMs: number;
  /**
   * A different key the device presented after the user verified `key`, refused. While it is set
   * the old verification no longer holds and nothing is sent to or decrypted from the device, under
   * either key, until the user compares the new safety number and accepts it (acceptPending).
   */
  pendingKey?: PublicKey;
}

interface IdentityFile {
  version: 1;
  /** By libsignal address name: base64 key, verified flag, first seen. */
  identities: Record<string, { key: string; verified: boolean; firstSeenMs: number; pendingKey?: string }>;
}

interface LocalFile {
  version: 1;
  /** Our identity key pair, libsignal's serialized form, base64. */
  identityKeyPair: string;
  /** Our registration id, 1 to 16383. */
  registrationId: number;
  /** Next id to hand out per prekey kind (one counter for all Kyber keys: one id space). */
  nextIds: { ec: number; signed: number; kyber: number };
  /** Ids of Kyber prekeys that are last-resort keys (kept after use). */
  lastResortKyberIds: number[];
  /** When the identity was created, in milliseconds since the Unix epoch. */
  createdAtMs: number;
}

/** Prekey ids stay below 2^24, as in Signal's clients; counters wrap and skip ids still stored. */
const MAX_PREKEY_ID = 0xffffff;

/** Our own identity and what we remember of everyone else's, with trust decisions. */
export class IdentityStore extends IdentityKeyStore {
  private readonly listeners = new Set<(event: IdentityChangeEvent) => void>();
  private readonly pair: IdentityKeyPair;

  constructor(
    private readonly local: JsonDoc<LocalFile>,
    private readonly doc: JsonDoc<IdentityFile>,
  ) {
    super();
    this.pair = IdentityKeyPair.deserialize(toBytes(Buffer.from(local.value.identityKeyPair, "base64")));
  }

  /** Subscribes to identity changes of contacts; returns the unsubscribe function. */
  onChange(listener: (event: IdentityChangeEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Our identity key pair. */
  keyPair(): IdentityKeyPair {
    return this.pair;
  }

  override async getIdentityKey(): Promise<PrivateKey> {
    return this.pair.privateKey;
  }

  override async getIdentityKeyPair(): Promise<IdentityKeyPair> {
    return this.pair;
  }

  override async getLocalRegistrationId(): Promise<number> {
    return this.local.value.registrationId;
  }

  override async getIdentity(name: ProtocolAddress): Promise<PublicKey | null> {
    return this.remembered(name.name())?.key ?? null;
  }

  /** What we remember about a device's identity, if anything. */
  identityOf(device: DeviceRef): RememberedIdentity | undefined {
    return this.remembered(addressOf(device).name());
  }

  /**
   * Remembers a device's identity key. Returns ReplacedExisting when it replaced a different one
   * (libsignal then archives the old sessions). A changed key of a verified device is never saved
   * here: libsignal asks isTrustedIdentity first, which refuses it; the app accepts it explicitly
   * with trustIdentity after the user compared the new safety number.
   */
  override async saveIdentity(name: ProtocolAddress, key: PublicKey): Promise<IdentityChange> {
    const known = this.remembered(name.name());
    if (known?.key.equals(key)) return IdentityChange.NewOrUnchanged;
    if (known !== undefined && this.guarded(name.name())) {
      throw new UntrustedIdentityError(deviceOf(name), "refusing to replace the verified identity key");
    }
    this.set(name.name(), key, false);
    await this.doc.save();
    if (known !== undefined) {
      this.emit({
        device: deviceOf(name),
        previousKey: known.key,
        newKey: key,
        wasVerified: false,
        outcome: "accepted",
      });
      return IdentityChange.ReplacedExisting;
    }
    return IdentityChange.NewOrUnchanged;
  }

  /**
   * Trust on first use; the same key again is trusted; a changed key is trusted (and will replace
   * the old one) unless the device was verified, in which case it is refused and the app is told.
   */
  override async isTrustedIdentity(
    name: ProtocolAddress,
    key: PublicKey,
    _direction: Direction,
  ): Promise<boolean> {
    const known = this.remembered(name.name());
    if (known === undefined) return true;
    if (known.pendingKey === undefined && known.key.equals(key)) return true;
    if (!this.guarded(name.name())) return true;
    if (known.pendingKey === undefined || !known.pendingKey.equals(key)) {
      // Kept so that safety numbers show the key actually presented, and it can be accepted.
      if (!known.key.equals(key)) {
        const entry = this.doc.value.identities[name.name()];
        if (entry !== undefined) entry.pendingKey = Buffer.from(key.serialize()).toString("base64");
        await this.doc.save();
      }
    }
    this.emit({
      device: deviceOf(name),
      previousKey: known.key,
      newKey: this.remembered(name.name())?.pendingKey ?? key,
      wasVerified: true,
      outcome: "refused",
    });
    return false;
  }

  /**
   * Marks a device's identity as verified (or not), for the key the user actually compared:
   * false (nothing changed) when that key is not the one we remember.
   */
  async setVerified(device: DeviceRef, key: PublicKey, verified: boolean): Promise<boolean> {
    const name = addressOf(device).name();
    const known = this.remembered(name);
    if (known === undefined || !known.key.equals(key)) return false;
    if (known.verified === verified) return true;
    this.set(name, key, verified, known.firstSeenMs);
    await this.doc.save();
    return true;
  }

  /**
   * Accepts a device's (new) identity key on the user's say-so, for example after a refused change
   * of a verified contact: it replaces the remembered key, verified or not as given.
   */
  async trustIdentity(device: DeviceRef, key: PublicKey, verified = false): Promise<void> {
    const name = addressOf(device).name();
    const known = this.remembered(name);
    const firstSeen = known?.key.equals(key) ? known.firstSeenMs : Date.now();
    this.set(name, key, verified, firstSeen);
    await this.doc.save();
  }

  /**
   * Accepts the key a verified device presented after its verification (see pendingKey), on the
   * user's say-so once they compared the new safety number: it replaces the remembered key,
   * verified. Returns the accepted key, or undefined when no change is pending.
   */
  async acceptPending(device: DeviceRef): Promise<PublicKey | undefined> {
    const known = this.identityOf(device);
    if (known?.pendingKey === undefined) return undefined;
    await this.trustIdentity(device, known.pendingKey, true);
    return known.pendingKey;
  }

  /** Verified, or verified before a refused change: its key changes are refused. */
  private guarded(name: string): boolean {
    const entry = this.doc.value.identities[name];
    return entry !== undefined && (entry.verified || entry.pendingKey !== undefined);
  }

  /** True when any device of the user has a remembered identity (we exchanged pairwise messages). */
  knowsUser(userId: string): boolean {
    const prefix = `${userId}.`;
    return Object.keys(this.doc.value.identities).some((name) => name.startsWith(prefix));
  }

  /** True when any device of the user is marked verified. */
  verifiedUser(userId: string): boolean {
    const prefix = `${userId}.`;
    return Object.entries(this.doc.value.identities).some(
      ([name, entry]) => name.startsWith(prefix) && (entry.verified || entry.pendingKey !== undefined),
    );
  }

  private remembered(name: string): RememberedIdentity | undefined {
    const entry = this.doc.value.identities[name];
    if (entry === undefined) return undefined;
    return {
      key: PublicKey.deserialize(toBytes(Buffer.from(entry.key, "base64"))),
      verified: entry.verified && entry.pendingKey === undefined,
      firstSeenMs: entry.firstSeenMs,
      ...(entry.pendingKey !== undefined && {
        pendingKey: PublicKey.deserialize(toBytes(Buffer.from(entry.pendingKey, "base64"))),
      }),
    };
  }

  private set(name: string, key: PublicKey, verified: boolean, firstSeenMs = Date.now()): void {
    this.doc.value.identities[name] = {
      key: Buffer.from(key.serialize()).toString("base64"),
      verified,
      firstSeenMs,
    };
  }

  private emit(event: IdentityChangeEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // A listener's failure must not change a trust decision.
      }
    }
  }
}

/** An identity key was refused; nothing was encrypted or decrypted. */
export class UntrustedIdentityError extends Error {
  constructor(
    /** The device whose key was refused. */
    readonly device: DeviceRef,
    reason = "its identity key changed and the contact was verified",
  ) {
    super(
      `untrusted identity of device ${device.deviceId} of user ${device.userId}: ${reason}; ` +
        "nothing is sent to or decrypted from that device until you compare the new safety number " +
        "(SwitchboardClient.safetyNumbers, or `switchboard safety-number <user>`) and, if it matches, " +
        "accept the new key with SwitchboardClient.verifyContact(userId, deviceId) (or " +
        "`switchboard safety-number <user> --verify <device>`)",
    );
    this.name = "UntrustedIdentityError";
  }
}

/** Double Ratchet sessions, one per remote device. */
export class SessionFileStore extends SessionStore {
  constructor(private readonly records: RecordDir) {
    super();
  }

  override async saveSession(name: ProtocolAddress, record: SessionRecord): Promise<void> {
    await this.records.put([[name.toString(), record.serialize()]]);
  }

  override async getSession(name: ProtocolAddress): Promise<SessionRecord | null> {
    const raw = this.records.get(name.toString());
    return raw === undefined ? null : SessionRecord.deserialize(raw);
  }

  override async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    const out: SessionRecord[] = [];
    for (const address of addresses) {
      const record = await this.getSession(address);
      if (record === null) throw new Error(`no session with ${address.name()}`);
      out.push(record);
    }
    return out;
  }

  /** Forgets the session with an address (a stale device); resolves once durable. */
  async deleteSession(name: ProtocolAddress): Promise<void> {
    await this.records.delete([name.toString()]);
  }
}

/** One-time EC prekeys (private halves); used ones are removed by libsignal. */
export class PreKeyFileStore extends PreKeyStore {
  constructor(private readonly records: RecordDir) {
    super();
  }

  override async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
    await this.records.put([[String(id), record.serialize()]]);
  }

  /** Saves many prekeys with one directory fsync. */
  async savePreKeys(records: PreKeyRecord[]): Promise<void> {
    await this.records.put(records.map((r) => [String(r.id()), r.serialize()]));
  }

  override async getPreKey(id: number): Promise<PreKeyRecord> {
    const raw = this.records.get(String(id));
    if (raw === undefined) throw new Error(`no one-time prekey ${id} (already used, or never ours)`);
    return PreKeyRecord.deserialize(raw);
  }

  override async removePreKey(id: number): Promise<void> {
    await this.records.delete([String(id)]);
  }

  has(id: number): boolean {
    return this.records.has(String(id));
  }

  /** How many one-time EC prekeys we hold. */
  count(): number {
    return this.records.keys().length;
  }
}

/** Signed EC prekeys (the current one and a few previous ones, for messages in flight). */
export class SignedPreKeyFileStore extends SignedPreKeyStore {
  constructor(private readonly records: RecordDir) {
    super();
  }

  override async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
    await this.records.put([[String(id), record.serialize()]]);
  }

  override async getSignedPreKey(id: number): Promise<SignedPreKeyRecord> {
    const raw = this.records.get(String(id));
    if (raw === undefined) throw new Error(`no signed prekey ${id}`);
    return SignedPreKeyRecord.deserialize(raw);
  }

  has(id: number): boolean {
    return this.records.has(String(id));
  }

  /** Every stored signed prekey, oldest first. */
  all(): SignedPreKeyRecord[] {
    return this.records
      .keys()
      .map((k) => SignedPreKeyRecord.deserialize(this.records.get(k) as Uint8Array<ArrayBuffer>))
      .sort((a, b) => a.timestamp() - b.timestamp() || a.id() - b.id());
  }

  async remove(ids: number[]): Promise<void> {
    await this.records.delete(ids.map(String));
  }
}

/**
 * Kyber prekeys: one-time ones are removed once used; last-resort ones stay, and each
 * (last-resort id, signed prekey id, base key) is accepted once, so a replayed PreKey message
 * cannot start a second session.
 */
export class KyberPreKeyFileStore extends KyberPreKeyStore {
  constructor(
    private readonly records: RecordDir,
    private readonly used: RecordDir,
    private readonly local: JsonDoc<LocalFile>,
  ) {
    super();
  }

  override async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
    await this.records.put([[String(id), record.serialize()]]);
  }

  /** Saves many Kyber prekeys with one directory fsync; lastResort marks last-resort keys. */
  async saveKyberPreKeys(records: KyberPreKeyRecord[], lastResort: boolean): Promise<void> {
    if (lastResort) {
      this.local.value.lastResortKyberIds.push(...records.map((r) => r.id()));
      await this.local.save();
    }
    await this.records.put(records.map((r) => [String(r.id()), r.serialize()]));
  }

  override async getKyberPreKey(id: number): Promise<KyberPreKeyRecord> {
    const raw = this.records.get(String(id));
    if (raw === undefined) throw new Error(`no Kyber prekey ${id} (already used, or never ours)`);
    return KyberPreKeyRecord.deserialize(raw);
  }

  override async markKyberPreKeyUsed(id: number, signedPreKeyId: number, baseKey: PublicKey): Promise<void> {
    if (!this.isLastResort(id)) {
      await this.records.delete([String(id)]);
      return;
    }
    const marker = createHash("sha256")
      .update(`${id}:${signedPreKeyId}:`)
      .update(baseKey.serialize())
      .digest("hex");
    const key = `${id}/${marker}`;
    if (this.used.has(key))
      throw new Error(`Kyber last-resort prekey ${id} was already used with this base key`);
    await this.used.put([[key, new Uint8Array(0)]]);
  }

  isLastResort(id: number): boolean {
    return this.local.value.lastResortKyberIds.includes(id);
  }

  has(id: number): boolean {
    return this.records.has(String(id));
  }

  /** How many one-time (not last-resort) Kyber prekeys we hold. */
  oneTimeCount(): number {
    return this.records.keys().filter((k) => !this.isLastResort(Number(k))).length;
  }

  /** Every stored last-resort key, oldest first. */
  lastResortKeys(): KyberPreKeyRecord[] {
    return this.local.value.lastResortKyberIds
      .filter((id) => this.records.has(String(id)))
      .map((id) => KyberPreKeyRecord.deserialize(this.records.get(String(id)) as Uint8Array<ArrayBuffer>));
  }

  /** Removes last-resort keys (after rotation), with their replay markers. */
  async removeLastResort(ids: number[]): Promise<void> {
    await this.records.delete(ids.map(String));
    const gone = new Set(ids);
    this.local.value.lastResortKyberIds = this.local.value.lastResortKyberIds.filter((id) => !gone.has(id));
    await this.local.save();
    await this.used.delete(this.used.keys().filter((k) => gone.has(Number(k.slice(0, k.indexOf("/"))))));
  }
}

/** Sender keys: ours and other members', per (sender device, distribution id). */
export class SenderKeyFileStore extends SenderKeyStore {
  constructor(private readonly records: RecordDir) {
    super();
  }

  override async saveSenderKey(
    sender: ProtocolAddress,
    distributionId: Uuid,
    record: SenderKeyRecord,
  ): Promise<void> {
    await this.records.put([[senderKeyName(sender, distributionId), record.serialize()]]);
  }

  override async getSenderKey(
    sender: ProtocolAddress,
    distributionId: Uuid,
  ): Promise<SenderKeyRecord | null> {
    const raw = this.records.get(senderKeyName(sender, distributionId));
    return raw === undefined ? null : SenderKeyRecord.deserialize(raw);
  }

  /** Forgets sender keys; resolves once durable. */
  async deleteSenderKeys(keys: Array<{ sender: ProtocolAddress; distributionId: Uuid }>): Promise<void> {
    await this.records.delete(keys.map((k) => senderKeyName(k.sender, k.distributionId)));
  }
}

function senderKeyName(sender: ProtocolAddress, distributionId: Uuid): string {
  return `${sender.toString()}/${distributionId.toLowerCase()}`;
}

/** Options of SignalStores.open. */
export interface SignalStoresOptions {
  /** Called on every identity change of a contact's device (accepted or refused). */
  onIdentityChange?: (event: IdentityChangeEvent) => void;
}

/**
 * Every libsignal store of one device, persisted under `<profile>/signal/`:
 *
 * - `local.json`: our identity key pair, registration id, prekey id counters (mode 0600);
 * - `identities.json`: other devices' identity keys with their verified flags;
 * - `sessions/`, `prekeys/`, `signed-prekeys/`, `kyber-prekeys/`, `kyber-used/`, `sender-keys/`:
 *   one file per record, named by the hex of its key.
 *
 * Every write is atomic (temporary file, fsync, rename, directory fsync) and durable before the
 * store call returns, so when libsignal's encrypt or decrypt resolves, the state it depends on is
 * on disk. Everything is also cached in memory; reads never touch the disk.
 */
export class SignalStores {
  private constructor(
    /** The store's directory (`<profile>/signal`). */
    readonly dir: string,
    private readonly local: JsonDoc<LocalFile>,
    readonly identity: IdentityStore,
    readonly sessions: SessionFileStore,
    readonly preKeys: PreKeyFileStore,
    readonly signedPreKeys: SignedPreKeyFileStore,
    readonly kyberPreKeys: KyberPreKeyFileStore,
    readonly senderKeys: SenderKeyFileStore,
    /** True when this open made the identity (the profile had none). */
    readonly identityCreated: boolean,
  ) {}

  /** Opens the stores of a profile directory, creating our identity on first use. */
  static async open(profileDir: string, options: SignalStoresOptions = {}): Promise<SignalStores> {
    const dir = join(profileDir, "signal");
    await ensureDir(dir);
    let identityCreated = false;
    const local = await JsonDoc.open<LocalFile>(join(dir, "local.json"), () => {
      identityCreated = true;
      return {
        version: 1,
        identityKeyPair: Buffer.from(IdentityKeyPair.generate().serialize()).toString("base64"),
        registrationId: randomInt(1, 16384),
        nextIds: {
          ec: randomInt(1, MAX_PREKEY_ID),
          signed: randomInt(1, MAX_PREKEY_ID),
          kyber: randomInt(1, MAX_PREKEY_ID),
        },
        lastResortKyberIds: [],
        createdAtMs: Date.now(),
      };
    });
    // First open: the identity must be durable before anything is derived from it.
    await local.save();
    const identities = await JsonDoc.open<IdentityFile>(join(dir, "identities.json"), () => ({
      version: 1,
      identities: {},
    }));
    const [sessions, preKeys, signed, kyber, kyberUsed, senderKeys] = await Promise.all(
      ["sessions", "prekeys", "signed-prekeys", "kyber-prekeys", "kyber-used", "sender-keys"].map((name) =>
        RecordDir.open(join(dir, name)),
      ),
    );
    const identity = new IdentityStore(local, identities);
    if (options.onIdentityChange) identity.onChange(options.onIdentityChange);
    return new SignalStores(
      dir,
      local,
      identity,
      new SessionFileStore(sessions as RecordDir),
      new PreKeyFileStore(preKeys as RecordDir),
      new SignedPreKeyFileStore(signed as RecordDir),
      new KyberPreKeyFileStore(kyber as RecordDir, kyberUsed as RecordDir, local),
      new SenderKeyFileStore(senderKeys as RecordDir),
      identityCreated,
    );
  }

  /** Our registration id (1 to 16383). */
  get registrationId(): number {
    return this.local.value.registrationId;
  }

  /**
   * Reserves `count` fresh ids of one prekey kind, durably, so that ids are never handed out twice
   * even across a crash between reserving and uploading. Ids stay in 1..2^24-1 and skip ids still
   * stored.
   */
  async reserveIds(kind: "ec" | "signed" | "kyber", count: number): Promise<number[]> {
    const stored = (id: number) =>
      kind === "ec"
        ? this.preKeys.has(id)
        : kind === "signed"
          ? this.signedPreKeys.has(id)
          : this.kyberPreKeys.has(id);
    const ids: number[] = [];
    let next = this.local.value.nextIds[kind];
    let scanned = 0;
    while (ids.length < count) {
      if (scanned++ > MAX_PREKEY_ID) throw new Error(`no free ${kind} prekey id left`);
      const id = next;
      next = next >= MAX_PREKEY_ID ? 1 : next + 1;
      if (!stored(id)) ids.push(id);
    }
    this.local.value.nextIds[kind] = next;
    await this.local.save();
    return ids;
  }
}
