import { create } from "@bufbuild/protobuf";
import {
  KEMKeyPair,
  KyberPreKeyRecord,
  PreKeyRecord,
  PrivateKey,
  SignedPreKeyRecord,
} from "@signalapp/libsignal-client";
import {
  EcPrekeySchema,
  type KyberPrekey,
  KyberPrekeySchema,
  type SignedEcPrekey,
  SignedEcPrekeySchema,
  type UploadKeysRequest,
  UploadKeysRequestSchema,
} from "../../gen/switchboard/v1/keys_pb.js";
import type { SignalStores } from "./stores.js";

/** The server's limits per UploadKeys call (docs/encryption.md). */
export const MAX_EC_PREKEYS_PER_UPLOAD = 100;
export const MAX_KYBER_PREKEYS_PER_UPLOAD = 32;

/** How many one-time prekeys of each kind to keep on the server, and when to top up. */
export interface PrekeyTargets {
  /** One-time EC prekeys to hold on the server after a top-up. Default 100. */
  ec: number;
  /** One-time Kyber prekeys to hold on the server after a top-up. Default 32. */
  kyber: number;
  /** Top up EC prekeys when fewer than this many are left. Default 50. */
  ecLowWater: number;
  /** Top up Kyber prekeys when fewer than this many are left. Default 16. */
  kyberLowWater: number;
}

export const DEFAULT_PREKEY_TARGETS: PrekeyTargets = {
  ec: 100,
  kyber: 32,
  ecLowWater: 50,
  kyberLowWater: 16,
};

/** Remaining one-time prekeys on the server (UploadKeysResponse.counts, GetPrekeyCounts, prekeys_low). */
export interface RemainingPrekeys {
  /** One-time EC prekeys left. */
  oneTimeEcPrekeys: number;
  /** One-time Kyber prekeys left. */
  oneTimeKyberPrekeys: number;
}

/**
 * The device's first upload: identity key, registration id, a signed EC prekey, a Kyber
 * last-resort prekey, and one batch of one-time EC and Kyber prekeys. Every private half is
 * durable in the stores before this resolves, so a crash after the upload never leaves the server
 * handing out keys we cannot use.
 */
export async function generateInitialKeys(
  stores: SignalStores,
  counts: { ec?: number; kyber?: number } = {},
): Promise<UploadKeysRequest> {
  const request = await generateOneTimePrekeys(
    stores,
    counts.ec ?? DEFAULT_PREKEY_TARGETS.ec,
    counts.kyber ?? DEFAULT_PREKEY_TARGETS.kyber,
  );
  request.identityKey = stores.identity.keyPair().publicKey.serialize();
  request.registrationId = stores.registrationId;
  request.signedPrekey = await generateSignedPrekey(stores);
  request.kyberLastResortPrekey = await generateLastResortKyberPrekey(stores);
  return request;
}

/** A new signed EC prekey, stored; its public half for an upload. */
export async function generateSignedPrekey(stores: SignalStores, now = Date.now()): Promise<SignedEcPrekey> {
  const [id] = (await stores.reserveIds("signed", 1)) as [number];
  // Strictly increasing timestamps order the signed prekeys for pruning, even within one millisecond.
  const newest = stores.signedPreKeys.all().at(-1)?.timestamp() ?? 0;
  const timestamp = Math.max(now, newest + 1);
  const key = PrivateKey.generate();
  const publicKey = key.getPublicKey();
  const signature = stores.identity.keyPair().privateKey.sign(publicKey.serialize());
  await stores.signedPreKeys.saveSignedPreKey(
    id,
    SignedPreKeyRecord.new(id, timestamp, publicKey, key, signature),
  );
  return create(SignedEcPrekeySchema, { keyId: id, publicKey: publicKey.serialize(), signature });
}

/** A new Kyber last-resort prekey, stored; its public half for an upload. */
export async function generateLastResortKyberPrekey(
  stores: SignalStores,
  now = Date.now(),
): Promise<KyberPrekey> {
  const [record] = await kyberRecords(stores, 1, now);
  await stores.kyberPreKeys.saveKyberPreKeys([record as KyberPreKeyRecord], true);
  return kyberProto(record as KyberPreKeyRecord);
}

/**
 * One upload of fresh one-time prekeys (at most the per-call limits), stored before this resolves.
 * Ids come from durable counters: never reused, and Kyber ids share one space with last-resort ids.
 */
export async function generateOneTimePrekeys(
  stores: SignalStores,
  ec: number,
  kyber: number,
): Promise<UploadKeysRequest> {
  if (ec > MAX_EC_PREKEYS_PER_UPLOAD || kyber > MAX_KYBER_PREKEYS_PER_UPLOAD || ec < 0 || kyber < 0) {
    throw new RangeError(
      `one upload carries 0 to ${MAX_EC_PREKEYS_PER_UPLOAD} EC and 0 to ${MAX_KYBER_PREKEYS_PER_UPLOAD} Kyber prekeys`,
    );
  }
  const ecIds = await stores.reserveIds("ec", ec);
  const ecRecords = ecIds.map((id) => {
    const key = PrivateKey.generate();
    return PreKeyRecord.new(id, key.getPublicKey(), key);
  });
  const kyberList = await kyberRecords(stores, kyber, Date.now());
  await stores.preKeys.savePreKeys(ecRecords);
  await stores.kyberPreKeys.saveKyberPreKeys(kyberList, false);
  return create(UploadKeysRequestSchema, {
    oneTimePrekeys: ecRecords.map((r) =>
      create(EcPrekeySchema, { keyId: r.id(), publicKey: r.publicKey().serialize() }),
    ),
    oneTimeKyberPrekeys: kyberList.map(kyberProto),
  });
}

/**
 * The uploads that bring the server's one-time prekeys back to the targets when either kind is
 * below its low-water mark; empty when nothing is needed. Several requests when the top-up
 * exceeds one call's limits.
 */
export async function replenishPrekeys(
  stores: SignalStores,
  remaining: RemainingPrekeys,
  targets: Partial<PrekeyTargets> = {},
): Promise<UploadKeysRequest[]> {
  const t = { ...DEFAULT_PREKEY_TARGETS, ...targets };
  let ec = remaining.oneTimeEcPrekeys < t.ecLowWater ? Math.max(0, t.ec - remaining.oneTimeEcPrekeys) : 0;
  let kyber =
    remaining.oneTimeKyberPrekeys < t.kyberLowWater
      ? Math.max(0, t.kyber - remaining.oneTimeKyberPrekeys)
      : 0;
  const requests: UploadKeysRequest[] = [];
  while (ec > 0 || kyber > 0) {
    const ecNow = Math.min(ec, MAX_EC_PREKEYS_PER_UPLOAD);
    const kyberNow = Math.min(kyber, MAX_KYBER_PREKEYS_PER_UPLOAD);
    requests.push(await generateOneTimePrekeys(stores, ecNow, kyberNow));
    ec -= ecNow;
    kyber -= kyberNow;
  }
  return requests;
}

/**
 * Rotates the signed EC prekey and the Kyber last-resort prekey: an upload carrying the new ones.
 * The previous `keepPrevious` of each stay in the store (PreKey messages built from them may still
 * be in flight); older ones are deleted.
 */
export async function rotateSignedPrekeys(
  stores: SignalStores,
  keepPrevious = 2,
): Promise<UploadKeysRequest> {
  const signedPrekey = await generateSignedPrekey(stores);
  const kyberLastResortPrekey = await generateLastResortKyberPrekey(stores);
  const signed = stores.signedPreKeys.all();
  const dropSigned = signed.slice(0, Math.max(0, signed.length - 1 - keepPrevious)).map((r) => r.id());
  await stores.signedPreKeys.remove(dropSigned);
  const lastResort = stores.kyberPreKeys.lastResortKeys();
  const dropKyber = lastResort.slice(0, Math.max(0, lastResort.length - 1 - keepPrevious)).map((r) => r.id());
  await stores.kyberPreKeys.removeLastResort(dropKyber);
  return create(UploadKeysRequestSchema, { signedPrekey, kyberLastResortPrekey });
}

/** How long a signed prekey (EC or Kyber last resort) is used before it is replaced: 7 days. */
export const SIGNED_PREKEY_MAX_AGE_MS = 7 * 86_400_000;

/** True when a signed prekey uploaded at `uploadedAtMs` is older than `maxAgeMs` (default 7 days). */
export function signedPrekeyNeedsRotation(
  uploadedAtMs: number,
  now = Date.now(),
  maxAgeMs = SIGNED_PREKEY_MAX_AGE_MS,
): boolean {
  return uploadedAtMs <= 0 || now - uploadedAtMs >= maxAgeMs;
}

async function kyberRecords(stores: SignalStores, count: number, now: number): Promise<KyberPreKeyRecord[]> {
  const ids = await stores.reserveIds("kyber", count);
  const identity = stores.identity.keyPair().privateKey;
  return ids.map((id) => {
    const pair = KEMKeyPair.generate();
    const signature = identity.sign(pair.getPublicKey().serialize());
    return KyberPreKeyRecord.new(id, now, pair, signature);
  });
}

function kyberProto(record: KyberPreKeyRecord): KyberPrekey {
  return create(KyberPrekeySchema, {
    keyId: record.id(),
    publicKey: record.publicKey().serialize(),
    signature: record.signature(),
  });
}
