import {
  ErrorCode,
  KEMPublicKey,
  LibSignalErrorBase,
  PreKeyBundle,
  PreKeySignalMessage,
  type ProtocolAddress,
  PublicKey,
  processPreKeyBundle,
  SignalMessage,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
} from "@signalapp/libsignal-client";
import type { PrekeyBundle } from "../../gen/switchboard/v1/keys_pb.js";
import { toBytes } from "../storage/records.js";
import {
  addressOf,
  type DeviceRef,
  SIGNAL_DEVICE_NUMBER,
  type SignalStores,
  UntrustedIdentityError,
} from "./stores.js";

/**
 * The kind of a pairwise ciphertext, with libsignal's numbers (CiphertextMessageType), so the
 * value can travel as is.
 */
export enum PairwiseMessageType {
  /** A Double Ratchet message on an established session. */
  Whisper = 2,
  /** The first messages of a session: carries what the recipient needs to build it (PQXDH). */
  PreKey = 3,
}

/** One device's copy of a pairwise-encrypted message. */
export interface DeviceCiphertext {
  /** The recipient's user. */
  userId: string;
  /** The recipient device. */
  deviceId: string;
  /** The registration id the session was built for (lets the server spot a stale device). */
  registrationId: number;
  /** Whisper or PreKey. */
  type: PairwiseMessageType;
  /** The serialized libsignal message. */
  ciphertext: Uint8Array;
}

/**
 * Fetches prekey bundles of some devices of a user (KeyService.GetBundles in production; a fake in
 * tests). `deviceIds` restricts the fetch; each returned bundle consumes one-time prekeys.
 */
export type BundleFetcher = (
  userId: string,
  deviceIds: string[],
) => Promise<{ bundles: PrekeyBundle[]; devicesWithoutKeys?: string[] }>;

/** Some recipient devices have no keys on the server, so no session can be opened with them. */
export class DevicesWithoutKeysError extends Error {
  constructor(
    /** The devices. */
    readonly devices: DeviceRef[],
  ) {
    super(
      `no prekey bundle for ${devices.map((d) => `device ${d.deviceId} of user ${d.userId}`).join(", ")}: ` +
        "they have not uploaded keys (or are no longer active)",
    );
    this.name = "DevicesWithoutKeysError";
  }
}

/** Why a ciphertext could not be decrypted. */
export type DecryptFailure =
  /** The message was already decrypted once (its keys are gone): drop it. */
  | "duplicate"
  /** No session matches (for example a Whisper message after our state was lost): ask for a resend. */
  | "no-session"
  /** Bad MAC, malformed or tampered bytes, or keys that do not match. */
  | "invalid"
  /**
   * The entry was encrypted for the devices of its time, not this one (sent before this device
   * was linked or had keys): there is nothing to decrypt, and nothing went wrong.
   */
  | "not-addressed"
  /**
   * The content was encrypted for another conversation, another kind of entry or another target
   * than the entry carrying it: a server moved or relabelled a ciphertext. Refused, never shown.
   */
  | "wrong-context"
  /**
   * The entry arrived in plaintext from a user this device has encrypted with before (a server
   * may have stripped the encryption). Refused unless the app opted in (acceptUnencrypted).
   */
  | "unencrypted";

/** A ciphertext from another device that could not be decrypted. */
export class DecryptError extends Error {
  constructor(
    /** The sending device. */
    readonly sender: DeviceRef,
    /** The kind of failure. */
    readonly reason: DecryptFailure,
    message: string,
    options?: { cause: unknown },
  ) {
    super(
      `cannot decrypt a message from device ${sender.deviceId} of user ${sender.userId}: ${message}`,
      options,
    );
    this.name = "DecryptError";
  }
}

/**
 * Pairwise (1:1, per device) encryption with the Signal protocol. Sessions are opened from prekey
 * bundles on first use (PQXDH), then advance with the Double Ratchet; every state change is
 * durable before encrypt or decrypt resolves. Operations on one remote device run one at a time.
 */
export class PairwiseCipher {
  private readonly local: ProtocolAddress;
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly stores: SignalStores,
    /** This device. */
    readonly localDevice: DeviceRef,
    private readonly fetchBundles: BundleFetcher,
  ) {
    this.local = addressOf(localDevice);
  }

  /** True when we hold a usable session with the device. */
  async hasSession(device: DeviceRef): Promise<boolean> {
    const record = await this.stores.sessions.getSession(addressOf(device));
    return record?.hasCurrentState() ?? false;
  }

  /** The device's registration id as our session knows it; 0 without a session. */
  async registrationIdOf(device: DeviceRef): Promise<number> {
    const record = await this.stores.sessions.getSession(addressOf(device));
    return record?.hasCurrentState() === true ? record.remoteRegistrationId() : 0;
  }

  /**
   * Encrypts one plaintext for each of the devices, opening sessions where there are none (one
   * bundle fetch per user, for the devices that lack a session). Refuses with
   * DevicesWithoutKeysError, before encrypting anything, if some device has no bundle.
   */
  async encrypt(plaintext: Uint8Array, recipients: DeviceRef[]): Promise<DeviceCiphertext[]> {
    const unique = dedupe(recipients);
    const self = unique.find(
      (d) => d.userId === this.localDevice.userId && d.deviceId === this.localDevice.deviceId,
    );
    if (self !== undefined) throw new Error(`device ${self.deviceId} cannot encrypt for itself`);
    const missing = new Map<string, string[]>();
    for (const device of unique) {
      if (await this.hasSession(device)) continue;
      const list = missing.get(device.userId) ?? [];
      list.push(device.deviceId);
      missing.set(device.userId, list);
    }
    const unreachable: DeviceRef[] = [];
    for (const [userId, deviceIds] of missing) {
      const answer = await this.fetchBundles(userId, deviceIds);
      const byDevice = new Map(answer.bundles.map((b) => [b.deviceId, b]));
      for (const deviceId of deviceIds) {
        const bundle = byDevice.get(deviceId);
        if (bundle === undefined) unreachable.push({ userId, deviceId });
        else await this.openSession({ userId, deviceId }, bundle);
      }
    }
    if (unreachable.length > 0) throw new DevicesWithoutKeysError(unreachable);
    const message = toBytes(plaintext);
    const out: DeviceCiphertext[] = [];
    for (const device of unique) {
      out.push(
        await this.exclusive(device, async () => {
          const address = addressOf(device);
          const ciphertext = await this.guard(device, () =>
            signalEncrypt(message, address, this.local, this.stores.sessions, this.stores.identity),
          );
          const session = await this.stores.sessions.getSession(address);
          return {
            userId: device.userId,
            deviceId: device.deviceId,
            registrationId: session?.remoteRegistrationId() ?? 0,
            type: ciphertext.type() as PairwiseMessageType,
            ciphertext: ciphertext.serialize(),
          };
        }),
      );
    }
    return out;
  }

  /**
   * Opens (or replaces) the session with a device from its prekey bundle. libsignal verifies the
   * bundle's signatures and asks the identity store whether the device's identity key is trusted.
   */
  async openSession(device: DeviceRef, bundle: PrekeyBundle): Promise<void> {
    const native = toNativeBundle(bundle);
    await this.exclusive(device, () =>
      this.guard(device, () =>
        processPreKeyBundle(
          native,
          addressOf(device),
          this.local,
          this.stores.sessions,
          this.stores.identity,
        ),
      ),
    );
  }

  /** Forgets the session with a device (reported stale); the next encrypt opens a new one. */
  async dropSession(device: DeviceRef): Promise<void> {
    await this.exclusive(device, () => this.stores.sessions.deleteSession(addressOf(device)));
  }

  /**
   * Decrypts a ciphertext from a device. A PreKey message opens a session (and consumes our
   * one-time prekeys); the session state is durable when this resolves.
   */
  async decrypt(
    sender: DeviceRef,
    message: { type: PairwiseMessageType | number; ciphertext: Uint8Array },
  ): Promise<Uint8Array> {
    const address = addressOf(sender);
    const bytes = toBytes(message.ciphertext);
    return this.exclusive(sender, () =>
      this.guard(sender, async () => {
        if (message.type === PairwiseMessageType.PreKey) {
          const parsed = parse(sender, () => PreKeySignalMessage.deserialize(bytes));
          const s = this.stores;
          return signalDecryptPreKey(
            parsed,
            address,
            this.local,
            s.sessions,
            s.identity,
            s.preKeys,
            s.signedPreKeys,
            s.kyberPreKeys,
          );
        }
        if (message.type === PairwiseMessageType.Whisper) {
          const parsed = parse(sender, () => SignalMessage.deserialize(bytes));
          return signalDecrypt(parsed, address, this.local, this.stores.sessions, this.stores.identity);
        }
        throw new DecryptError(sender, "invalid", `unknown message type ${message.type}`);
      }),
    );
  }

  /** Runs fn after every earlier operation on the same device has finished. */
  private exclusive<T>(device: DeviceRef, fn: () => Promise<T>): Promise<T> {
    const key = addressOf(device).name();
    const before = this.locks.get(key) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.catch(() => {});
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return run;
  }

  /** Turns libsignal's errors into ours, with the device named. */
  private async guard<T>(device: DeviceRef, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw translate(device, err);
    }
  }
}

function translate(device: DeviceRef, err: unknown): unknown {
  if (err instanceof DecryptError || err instanceof UntrustedIdentityError) return err;
  if (!(err instanceof LibSignalErrorBase)) return err;
  switch (err.code) {
    case ErrorCode.UntrustedIdentity:
      return new UntrustedIdentityError(device);
    case ErrorCode.DuplicatedMessage:
      return new DecryptError(device, "duplicate", "the message was already received", { cause: err });
    case ErrorCode.InvalidSession:
      return new DecryptError(device, "no-session", "no session matches this message", { cause: err });
    case ErrorCode.VerificationFailed:
      return new DecryptError(device, "invalid", `a signature does not verify (${err.message})`, {
        cause: err,
      });
    case ErrorCode.InvalidRegistrationId:
      return new DecryptError(device, "invalid", "the bundle's registration id is invalid", { cause: err });
    default:
      return new DecryptError(device, "invalid", err.message, { cause: err });
  }
}

function parse<T>(sender: DeviceRef, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new DecryptError(sender, "invalid", "the ciphertext is malformed", { cause: err });
  }
}

/** Converts the key directory's bundle into libsignal's, refusing incomplete ones clearly. */
export function toNativeBundle(bundle: PrekeyBundle): PreKeyBundle {
  const { signedPrekey, kyberPrekey, oneTimePrekey } = bundle;
  if (signedPrekey === undefined || kyberPrekey === undefined || bundle.identityKey.length === 0) {
    throw new Error(
      `the bundle of device ${bundle.deviceId} lacks its identity key, signed prekey or Kyber prekey`,
    );
  }
  return PreKeyBundle.new(
    bundle.registrationId,
    SIGNAL_DEVICE_NUMBER,
    oneTimePrekey === undefined ? null : oneTimePrekey.keyId,
    oneTimePrekey === undefined ? null : PublicKey.deserialize(toBytes(oneTimePrekey.publicKey)),
    signedPrekey.keyId,
    PublicKey.deserialize(toBytes(signedPrekey.publicKey)),
    toBytes(signedPrekey.signature),
    PublicKey.deserialize(toBytes(bundle.identityKey)),
    kyberPrekey.keyId,
    KEMPublicKey.deserialize(toBytes(kyberPrekey.publicKey)),
    toBytes(kyberPrekey.signature),
  );
}

function dedupe(devices: DeviceRef[]): DeviceRef[] {
  const seen = new Map<string, DeviceRef>();
  for (const d of devices) seen.set(`${d.userId}.${d.deviceId}`, d);
  return [...seen.values()];
}
