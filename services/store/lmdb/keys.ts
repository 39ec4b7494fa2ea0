import type { Database, Key } from "lmdb";
import { StoreError } from "../errors.js";
import type {
  DeviceKeysRecord,
  DeviceKeysWrite,
  KeyStore,
  OneTimePrekeyRecord,
  PrekeyCountsRecord,
  PrekeyKind,
  PrekeyTake,
  SignedPrekeyRecord,
} from "../types.js";
import type { WriteUnit } from "./environment.js";

/** A one-time prekey as stored; its id and kind are in the key. */
export interface StoredPrekey {
  publicKey: Uint8Array;
  signature?: Uint8Array;
}

/** The sub-databases of the key directory; engine.ts documents the key layout. */
export interface KeyDbs {
  deviceKeys: Database<DeviceKeysRecord, Key>;
  oneTimePrekeys: Database<StoredPrekey, Key>;
  prekeyCounts: Database<PrekeyCountsRecord, Key>;
}

// See conversations.ts: an exclusive upper bound for every key that starts with a prefix.
const HIGH = Buffer.from([0xff]);

// msgpack hands byte strings back as Buffers; callers get plain Uint8Arrays of their own.
function bytes(value: Uint8Array): Uint8Array {
  return new Uint8Array(value);
}

function signed(p: SignedPrekeyRecord): SignedPrekeyRecord {
  return {
    keyId: p.keyId,
    publicKey: bytes(p.publicKey),
    signature: bytes(p.signature),
    uploadedAtMs: p.uploadedAtMs,
  };
}

function keysRecord(r: DeviceKeysRecord): DeviceKeysRecord {
  return {
    deviceId: r.deviceId,
    userId: r.userId,
    registrationId: r.registrationId,
    identityKey: bytes(r.identityKey),
    signedPrekey: signed(r.signedPrekey),
    kyberLastResort: signed(r.kyberLastResort),
  };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * The key directory on LMDB. A write and a take each run as one unit inside the write
 * transaction (see engine.ts), so concurrent takes are serialised: each sees the deletes of the
 * ones before it, and a key is handed out once.
 */
export class LmdbKeyStore implements KeyStore {
  constructor(
    private readonly dbs: KeyDbs,
    private readonly writeUnit: WriteUnit,
  ) {}

  async putKeys(write: DeviceKeysWrite, maxOneTimePerKind: number): Promise<PrekeyCountsRecord> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const stored = dbs.deviceKeys.get(write.deviceId);
      if (stored !== undefined) {
        if (!sameBytes(stored.identityKey, write.identityKey)) {
          throw new StoreError("conflict", `device ${write.deviceId} has another identity key`);
        }
        if (stored.registrationId !== write.registrationId) {
          throw new StoreError("conflict", `device ${write.deviceId} has another registration id`);
        }
      }
      const signedPrekey = write.signedPrekey ?? stored?.signedPrekey;
      const kyberLastResort = write.kyberLastResort ?? stored?.kyberLastResort;
      if (signedPrekey === undefined || kyberLastResort === undefined) {
        throw new RangeError(`device ${write.deviceId} has no keys yet: its signed prekeys are required`);
      }
      if (stored === undefined || write.signedPrekey !== undefined || write.kyberLastResort !== undefined) {
        dbs.deviceKeys.put(write.deviceId, {
          deviceId: write.deviceId,
          userId: write.userId,
          registrationId: write.registrationId,
          identityKey: write.identityKey,
          signedPrekey: signed(signedPrekey),
          kyberLastResort: signed(kyberLastResort),
        });
      }
      const counts = dbs.prekeyCounts.get(write.deviceId) ?? { ec: 0, kyber: 0 };
      const next = {
        ec: counts.ec + this.addPrekeys(write.deviceId, "ec", write.oneTimeEc ?? []),
        kyber: counts.kyber + this.addPrekeys(write.deviceId, "kyber", write.oneTimeKyber ?? []),
      };
      // Throwing rolls back this unit alone, keys added above included.
      for (const kind of ["ec", "kyber"] as const) {
        if (next[kind] > maxOneTimePerKind) {
          throw new StoreError(
            "limit",
            `device ${write.deviceId} would hold ${next[kind]} one-time ${kind} prekeys, more than ${maxOneTimePerKind}`,
          );
        }
      }
      if (next.ec !== counts.ec || next.kyber !== counts.kyber) dbs.prekeyCounts.put(write.deviceId, next);
      return next;
    });
  }

  async getKeys(deviceId: string): Promise<DeviceKeysRecord | undefined> {
    const record = this.dbs.deviceKeys.get(deviceId);
    return record === undefined ? undefined : keysRecord(record);
  }

  async countPrekeys(deviceId: string): Promise<PrekeyCountsRecord> {
    const counts = this.dbs.prekeyCounts.get(deviceId);
    return { ec: counts?.ec ?? 0, kyber: counts?.kyber ?? 0 };
  }

  async takePrekeys(deviceId: string): Promise<PrekeyTake> {
    const { dbs } = this;
    return this.writeUnit(() => {
      const ec = this.takeOne(deviceId, "ec");
      const kyber = this.takeOne(deviceId, "kyber");
      const counts = dbs.prekeyCounts.get(deviceId) ?? { ec: 0, kyber: 0 };
      const remaining = {
        ec: Math.max(0, counts.ec - (ec === undefined ? 0 : 1)),
        kyber: Math.max(0, counts.kyber - (kyber === undefined ? 0 : 1)),
      };
      if (ec !== undefined || kyber !== undefined) dbs.prekeyCounts.put(deviceId, remaining);
      return { ...(ec !== undefined && { ec }), ...(kyber !== undefined && { kyber }), remaining };
    });
  }

  async deleteKeys(deviceId: string): Promise<void> {
    const { dbs } = this;
    await this.writeUnit(() => {
      dbs.deviceKeys.remove(deviceId);
      dbs.prekeyCounts.remove(deviceId);
      for (const key of dbs.oneTimePrekeys.getKeys({ start: [deviceId], end: [deviceId, HIGH] })) {
        dbs.oneTimePrekeys.remove(key);
      }
    });
  }

  // Adds the keys whose ids are not stored yet; returns how many were added.
  private addPrekeys(deviceId: string, kind: PrekeyKind, keys: readonly OneTimePrekeyRecord[]): number {
    let added = 0;
    for (const key of keys) {
      const id = [deviceId, kind, key.keyId];
      if (this.dbs.oneTimePrekeys.doesExist(id)) continue;
      this.dbs.oneTimePrekeys.put(id, {
        publicKey: key.publicKey,
        ...(key.signature !== undefined && { signature: key.signature }),
      });
      added++;
    }
    return added;
  }

  // The lowest id of the kind, removed in the same unit that read it.
  private takeOne(deviceId: string, kind: PrekeyKind): OneTimePrekeyRecord | undefined {
    for (const { key, value } of this.dbs.oneTimePrekeys.getRange({
      start: [deviceId, kind],
      end: [deviceId, kind, HIGH],
      limit: 1,
    })) {
      this.dbs.oneTimePrekeys.remove(key);
      return {
        keyId: (key as [string, string, number])[2],
        publicKey: bytes(value.publicKey),
        ...(value.signature !== undefined && { signature: bytes(value.signature) }),
      };
    }
    return undefined;
  }
}
