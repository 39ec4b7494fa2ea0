import { create } from "@bufbuild/protobuf";
import {
  type BusEvent,
  BusEventSchema,
  PrekeysLowSchema,
} from "../../gen/switchboard/internal/v1/events_pb.js";
import { PrekeysLowFrameSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import {
  EcPrekeySchema,
  KyberPrekeySchema,
  type PrekeyBundle,
  PrekeyBundleSchema,
  SignedEcPrekeySchema,
} from "../../gen/switchboard/v1/keys_pb.js";
import type { EventBus, Unsubscribe } from "../bus/types.js";
import { ConflictError, InvalidInputError, LimitError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { RateLimit, RateLimiter } from "../common/rate-limit/types.js";
import { Refusals } from "../common/refusals.js";
import { isStoreError } from "../store/errors.js";
import type {
  AccountStore,
  DeviceKeysRecord,
  KeyStore,
  OneTimePrekeyRecord,
  PrekeyCountsRecord,
  SignedPrekeyRecord,
} from "../store/types.js";
import {
  distinctIds,
  type EcPrekeyInput,
  ecKey,
  kemKey,
  own,
  type SignedPrekeyInput,
  sameBytes,
  verifySignature,
} from "./key-checks.js";
import { enforce, type RefusalSink } from "./refusals.js";

export type { EcPrekeyInput, SignedPrekeyInput } from "./key-checks.js";

/** Limits and thresholds of the key directory. */
export interface KeysOptions {
  /** One-time EC prekeys accepted in one upload. */
  maxEcPrekeysPerUpload: number;
  /**
   * One-time Kyber prekeys accepted in one upload. Each is about 1.6 KiB, and uploads pass
   * through the gateway, whose request limit is the payload limit plus 16 KiB (80 KiB by default).
   */
  maxKyberPrekeysPerUpload: number;
  /** One-time prekeys of each kind a device may hold on the server. */
  maxStoredPerKind: number;
  /** A device is told to upload more when a fetch leaves fewer than this of either kind. */
  lowThreshold: number;
  /** At most one low-prekey notice per device per this many milliseconds (per accounts process). */
  lowNoticeIntervalMs: number;
  /** Limits GetBundles calls per requesting user (one token per call); none when absent. */
  bundleRate?: { limiter: RateLimiter; limit: RateLimit };
  /**
   * Limits the one-time prekeys one user takes from one device of another (prekey draining):
   * past it, that requester gets bundles without one-time prekeys (the signed prekey and the
   * Kyber last-resort prekey still open a session). None when absent.
   */
  oneTimePrekeyRate?: { limiter: RateLimiter; limit: RateLimit };
  /** Counts and logs refusals; one is made when absent. */
  refusals?: RefusalSink;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
}

/** The defaults: 100 EC and 32 Kyber prekeys per upload, 1000 of each stored, notice below 10. */
export const DEFAULT_KEYS_OPTIONS: KeysOptions = {
  maxEcPrekeysPerUpload: 100,
  maxKyberPrekeysPerUpload: 32,
  maxStoredPerKind: 1000,
  lowThreshold: 10,
  lowNoticeIntervalMs: 60_000,
};

/** libsignal's registration ids are 14 bits; 0 means "not given". */
const MAX_REGISTRATION_ID = 0x3fff;
/** Low-prekey notice times remembered at most; older ones are forgotten first. */
const MAX_NOTICE_ENTRIES = 10_000;

/** An upload, shaped like UploadKeysRequest so the handler passes the request as is. */
export interface UploadInput {
  /** Empty after the first upload means "keep". */
  identityKey: Uint8Array;
  /** 0 after the first upload means "keep". */
  registrationId: number;
  signedPrekey?: SignedPrekeyInput | undefined;
  kyberLastResortPrekey?: SignedPrekeyInput | undefined;
  oneTimePrekeys: readonly EcPrekeyInput[];
  oneTimeKyberPrekeys: readonly SignedPrekeyInput[];
}

/** What a device knows about its own keys on the server. */
export interface KeyStatus {
  /** One-time prekeys left. */
  counts: PrekeyCountsRecord;
  /** Its stored keys, undefined before the first upload. */
  keys: DeviceKeysRecord | undefined;
}

/** The answer to a bundle fetch. */
export interface Bundles {
  /** One per active device with keys, oldest device first. */
  bundles: PrekeyBundle[];
  /** Active devices that have not uploaded keys. */
  devicesWithoutKeys: string[];
}

function signedEc(p: SignedPrekeyRecord) {
  return create(SignedEcPrekeySchema, { keyId: p.keyId, publicKey: p.publicKey, signature: p.signature });
}

function kyberPrekey(p: { keyId: number; publicKey: Uint8Array; signature?: Uint8Array | undefined }) {
  return create(KyberPrekeySchema, {
    keyId: p.keyId,
    publicKey: p.publicKey,
    signature: p.signature ?? new Uint8Array(),
  });
}

/**
 * The end-to-end encryption key directory: devices publish the public halves of their Signal
 * protocol keys, others fetch one bundle per device to open sessions. Every signature is verified
 * on upload against the device's identity key, which never changes for a device. Fetches consume
 * one-time prekeys atomically (the store guarantees each is handed out once) and tell a device on
 * its stream, through a broadcast, when it runs low. Inputs of other kinds than keys (ids) are
 * validated by the handler.
 */
export class Keys {
  private readonly now: () => number;
  private readonly refusals: RefusalSink;
  /** deviceId -> when its last low-prekey notice went out; Map order is recency. */
  private readonly noticed = new Map<string, number>();

  constructor(
    private readonly keys: KeyStore,
    private readonly accounts: AccountStore,
    private readonly bus: EventBus,
    private readonly log: Logger,
    private readonly options: KeysOptions = DEFAULT_KEYS_OPTIONS,
  ) {
    this.now = options.now ?? Date.now;
    this.refusals = options.refusals ?? new Refusals(log);
  }

  /**
   * Publishes the device's keys: the first upload sets the identity key and registration id and
   * needs both signed prekeys; later ones rotate them and add one-time prekeys. Returns the
   * one-time prekey counts after the upload.
   */
  async upload(userId: string, deviceId: string, input: UploadInput): Promise<PrekeyCountsRecord> {
    const o = this.options;
    if (input.oneTimePrekeys.length > o.maxEcPrekeysPerUpload) {
      throw new InvalidInputError(
        `one_time_prekeys: at most ${o.maxEcPrekeysPerUpload} per upload, got ${input.oneTimePrekeys.length}`,
      );
    }
    if (input.oneTimeKyberPrekeys.length > o.maxKyberPrekeysPerUpload) {
      throw new InvalidInputError(
        `one_time_kyber_prekeys: at most ${o.maxKyberPrekeysPerUpload} per upload, got ${input.oneTimeKyberPrekeys.length}`,
      );
    }
    if (!Number.isInteger(input.registrationId) || input.registrationId > MAX_REGISTRATION_ID) {
      throw new InvalidInputError(`registration_id: 1 to ${MAX_REGISTRATION_ID}`);
    }
    distinctIds("one_time_prekeys", input.oneTimePrekeys);
    distinctIds("one_time_kyber_prekeys", input.oneTimeKyberPrekeys);
    if (input.identityKey.length > 0) ecKey("identity_key", input.identityKey);

    await this.requireActiveDevice(userId, deviceId);
    const stored = await this.keys.getKeys(deviceId);
    const identityKey = this.identityOf(input, stored);
    const registrationId = this.registrationOf(input, stored);
    if (
      stored === undefined &&
      (input.signedPrekey === undefined || input.kyberLastResortPrekey === undefined)
    ) {
      throw new ConflictError(
        "the device has no keys yet: the first upload needs signed_prekey and kyber_last_resort_prekey",
      );
    }

    // Every key is checked before anything is stored, so a refused upload stores nothing.
    const identity = ecKey("identity_key", identityKey);
    if (input.signedPrekey !== undefined) {
      ecKey("signed_prekey.public_key", input.signedPrekey.publicKey);
      verifySignature(identity, "signed_prekey", input.signedPrekey);
    }
    if (input.kyberLastResortPrekey !== undefined) {
      kemKey("kyber_last_resort_prekey.public_key", input.kyberLastResortPrekey.publicKey);
      verifySignature(identity, "kyber_last_resort_prekey", input.kyberLastResortPrekey);
    }
    input.oneTimePrekeys.forEach((k, i) => {
      ecKey(`one_time_prekeys[${i}].public_key`, k.publicKey);
    });
    // libsignal looks one-time and last-resort Kyber prekeys up in one id space.
    const lastResortId = input.kyberLastResortPrekey?.keyId ?? stored?.kyberLastResort.keyId;
    input.oneTimeKyberPrekeys.forEach((k, i) => {
      const field = `one_time_kyber_prekeys[${i}]`;
      if (k.keyId === lastResortId)
        throw new InvalidInputError(`${field}: key id ${k.keyId} is the last-resort prekey's id`);
      kemKey(`${field}.public_key`, k.publicKey);
      verifySignature(identity, field, k);
    });

    const at = this.now();
    const signed = (k: SignedPrekeyInput): SignedPrekeyRecord => ({
      keyId: k.keyId,
      publicKey: own(k.publicKey),
      signature: own(k.signature),
      uploadedAtMs: at,
    });
    try {
      const counts = await this.keys.putKeys(
        {
          deviceId,
          userId,
          identityKey,
          registrationId,
          ...(input.signedPrekey !== undefined && { signedPrekey: signed(input.signedPrekey) }),
          ...(input.kyberLastResortPrekey !== undefined && {
            kyberLastResort: signed(input.kyberLastResortPrekey),
          }),
          oneTimeEc: input.oneTimePrekeys.map((k) => ({ keyId: k.keyId, publicKey: own(k.publicKey) })),
          oneTimeKyber: input.oneTimeKyberPrekeys.map((k) => ({
            keyId: k.keyId,
            publicKey: own(k.publicKey),
            signature: own(k.signature),
          })),
        },
        o.maxStoredPerKind,
      );
      this.log.info(
        {
          userId,
          deviceId,
          first: stored === undefined,
          ec: input.oneTimePrekeys.length,
          kyber: input.oneTimeKyberPrekeys.length,
        },
        "keys uploaded",
      );
      return counts;
    } catch (err) {
      // A concurrent first upload of the same device with another identity won.
      if (isStoreError(err, "conflict")) {
        throw new ConflictError(
          "identity_key: the device already has another identity key; it never changes",
        );
      }
      if (isStoreError(err, "limit")) {
        throw new LimitError(
          `a device may hold at most ${o.maxStoredPerKind} one-time prekeys of each kind; upload fewer`,
        );
      }
      throw err;
    }
  }

  /** The device's one-time prekey counts and stored keys. */
  async status(deviceId: string): Promise<KeyStatus> {
    const [counts, keys] = await Promise.all([this.keys.countPrekeys(deviceId), this.keys.getKeys(deviceId)]);
    return { counts, keys };
  }

  /**
   * One bundle per active device of a user (the requesting device left out; only deviceIds when
   * given), each taking one one-time prekey of each kind. Devices left with few one-time prekeys
   * are told through a broadcast.
   */
  async bundles(
    requester: { userId: string; deviceId: string },
    userId: string,
    deviceIds: readonly string[] = [],
  ): Promise<Bundles> {
    const rate = this.options.bundleRate;
    await enforce(
      rate,
      requester.userId,
      1,
      this.refusals,
      "bundle_rate",
      `prekey bundle fetches are limited to ${rate?.limit.burst} per minute per user`,
      { userId: requester.userId },
    );
    if ((await this.accounts.getUser(userId)) === undefined) throw new NotFoundError("no such user");
    const only = new Set(deviceIds);
    const devices = (await this.accounts.listDevices(userId)).filter(
      (d) =>
        d.revokedAtMs === 0 && d.deviceId !== requester.deviceId && (only.size === 0 || only.has(d.deviceId)),
    );
    const found = await Promise.all(
      devices.map(async (d) =>
        this.bundleOf(d.deviceId, await this.mayTakeOneTime(requester.userId, userId, d.deviceId)),
      ),
    );
    const bundles: PrekeyBundle[] = [];
    const devicesWithoutKeys: string[] = [];
    const low: BusEvent[] = [];
    found.forEach((f, i) => {
      const deviceId = devices[i]?.deviceId ?? "";
      if (f === undefined) {
        devicesWithoutKeys.push(deviceId);
        return;
      }
      bundles.push(f.bundle);
      if (f.remaining === undefined) return;
      const notice = this.lowNotice(userId, deviceId, f.remaining);
      if (notice !== undefined) low.push(notice);
    });
    if (low.length > 0) this.bus.broadcast(low);
    return { bundles, devicesWithoutKeys };
  }

  /**
   * The active devices of users with their registration ids (0 for a device without keys),
   * oldest device first; users without any device record (unknown ids) are left out. Gateways
   * check per-device ciphertexts against this.
   */
  async registrations(
    userIds: readonly string[],
  ): Promise<Array<{ userId: string; devices: Array<{ deviceId: string; registrationId: number }> }>> {
    const users = await Promise.all(
      userIds.map(async (userId) => {
        const all = await this.accounts.listDevices(userId);
        if (all.length === 0) return undefined;
        const active = all.filter((d) => d.revokedAtMs === 0);
        const keys = await Promise.all(active.map((d) => this.keys.getKeys(d.deviceId)));
        return {
          userId,
          devices: active.map((d, i) => ({
            deviceId: d.deviceId,
            registrationId: keys[i]?.registrationId ?? 0,
          })),
        };
      }),
    );
    return users.filter((u) => u !== undefined);
  }

  /** Deletes a revoked device's keys. */
  async forgetDevice(deviceId: string): Promise<void> {
    await this.keys.deleteKeys(deviceId);
    this.noticed.delete(deviceId);
  }

  /**
   * Deletes the keys of devices as their revocations are broadcast. Fetches skip revoked devices
   * anyway, so a missed broadcast only leaves unused keys behind. The same broadcast closes the
   * streams of a suspended user's devices, which keep their keys: only a device the store has
   * revoked (or no longer has) loses them.
   */
  watchRevocations(): Unsubscribe {
    const forgetIfRevoked = async (deviceId: string) => {
      const device = await this.accounts.getDevice(deviceId);
      if (device === undefined || device.revokedAtMs !== 0) await this.forgetDevice(deviceId);
    };
    return this.bus.onBroadcast((events) => {
      for (const e of events) {
        if (e.event.case !== "deviceRevoked") continue;
        const { deviceId } = e.event.value;
        forgetIfRevoked(deviceId).catch((err: unknown) =>
          this.log.warn({ err, deviceId }, "could not delete a revoked device's keys"),
        );
      }
    });
  }

  /**
   * Whether the requester may take another one-time prekey of the device. Fetching one's own
   * devices is never limited; a refusal is counted (the fetch itself still succeeds).
   */
  private async mayTakeOneTime(requesterUserId: string, userId: string, deviceId: string): Promise<boolean> {
    const rate = this.options.oneTimePrekeyRate;
    if (rate === undefined || requesterUserId === userId) return true;
    const wait = await rate.limiter.take(rate.limit, `${requesterUserId}:${deviceId}`);
    if (wait <= 0) return true;
    this.refusals.refuse("prekey_pair_limit", "one-time prekey withheld: per-pair limit reached", {
      userId: requesterUserId,
      deviceId,
    });
    return false;
  }

  /**
   * The device's bundle; with oneTime false, without one-time prekeys (the Kyber last-resort
   * prekey instead) and without touching the store's counts (remaining is then undefined).
   */
  private async bundleOf(
    deviceId: string,
    oneTime: boolean,
  ): Promise<{ bundle: PrekeyBundle; remaining: PrekeyCountsRecord | undefined } | undefined> {
    const keys = await this.keys.getKeys(deviceId);
    if (keys === undefined) return undefined;
    const take = oneTime
      ? await this.keys.takePrekeys(deviceId)
      : { ec: undefined, kyber: undefined, remaining: undefined };
    const kyber: OneTimePrekeyRecord = take.kyber ?? keys.kyberLastResort;
    const bundle = create(PrekeyBundleSchema, {
      deviceId,
      registrationId: keys.registrationId,
      identityKey: keys.identityKey,
      signedPrekey: signedEc(keys.signedPrekey),
      kyberPrekey: kyberPrekey(kyber),
      kyberPrekeyIsLastResort: take.kyber === undefined,
      ...(take.ec !== undefined && {
        oneTimePrekey: create(EcPrekeySchema, { keyId: take.ec.keyId, publicKey: take.ec.publicKey }),
      }),
    });
    return { bundle, remaining: take.remaining };
  }

  private lowNotice(userId: string, deviceId: string, remaining: PrekeyCountsRecord): BusEvent | undefined {
    const { lowThreshold, lowNoticeIntervalMs } = this.options;
    if (remaining.ec >= lowThreshold && remaining.kyber >= lowThreshold) return undefined;
    const now = this.now();
    const last = this.noticed.get(deviceId);
    if (last !== undefined && now - last < lowNoticeIntervalMs) return undefined;
    this.noticed.delete(deviceId);
    this.noticed.set(deviceId, now);
    if (this.noticed.size > MAX_NOTICE_ENTRIES) {
      const oldest = this.noticed.keys().next();
      if (!oldest.done) this.noticed.delete(oldest.value);
    }
    return create(BusEventSchema, {
      event: {
        case: "prekeysLow",
        value: create(PrekeysLowSchema, {
          userId,
          deviceId,
          frame: create(PrekeysLowFrameSchema, {
            oneTimeEcRemaining: remaining.ec,
            oneTimeKyberRemaining: remaining.kyber,
          }),
        }),
      },
    });
  }

  private async requireActiveDevice(userId: string, deviceId: string): Promise<void> {
    const device = await this.accounts.getDevice(deviceId);
    if (device === undefined || device.userId !== userId || device.revokedAtMs !== 0) {
      throw new NotFoundError("no such device");
    }
  }

  private identityOf(input: UploadInput, stored: DeviceKeysRecord | undefined): Uint8Array {
    if (stored === undefined) {
      if (input.identityKey.length === 0)
        throw new ConflictError("identity_key: required on the device's first upload");
      return own(input.identityKey);
    }
    if (input.identityKey.length > 0 && !sameBytes(input.identityKey, stored.identityKey)) {
      throw new ConflictError(
        "identity_key: the device already has another identity key; it never changes (link a new device instead)",
      );
    }
    return stored.identityKey;
  }

  private registrationOf(input: UploadInput, stored: DeviceKeysRecord | undefined): number {
    if (stored === undefined) {
      if (input.registrationId === 0)
        throw new ConflictError("registration_id: required on the device's first upload");
      return input.registrationId;
    }
    if (input.registrationId !== 0 && input.registrationId !== stored.registrationId) {
      throw new ConflictError(
        "registration_id: the device already has another registration id; it never changes",
      );
    }
    return stored.registrationId;
  }
}
