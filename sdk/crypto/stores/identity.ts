import {
  type Direction,
  IdentityChange,
  IdentityKeyPair,
  IdentityKeyStore,
  type PrivateKey,
  type ProtocolAddress,
  PublicKey,
} from "@signalapp/libsignal-client";
import { type JsonDoc, toBytes } from "../../storage/records.js";
import { addressOf, deviceOf } from "./address.js";
import type { IdentityFile, LocalFile } from "./documents.js";
import type { DeviceRef, IdentityChangeEvent, RememberedIdentity } from "./types.js";

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
