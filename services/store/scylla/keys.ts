import type { types } from "cassandra-driver";
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
import { unknownOutcome } from "./outcome.js";
import { type Cql, long, num, type Row, sleep } from "./schema.js";

/** How often a take retries when concurrent takers keep winning the keys it picked. */
const TAKE_ATTEMPTS = 32;

/** Keys a take reads per attempt; it tries them in random order, so concurrent takers spread out. */
const TAKE_CANDIDATES = 16;

/** How often putKeys retries when concurrent writes to the same device keep changing what it read. */
const PUT_ATTEMPTS = 8;

/** Rows per conditional batch of one-time prekeys (each batch is one LWT on one partition). */
const INSERT_BATCH = 100;

const KINDS: readonly PrekeyKind[] = ["ec", "kyber"];

const KEY_COLUMNS = `user_id, registration_id, identity_key, signed_prekey_id, signed_prekey,
  signed_prekey_signature, signed_prekey_at_ms, kyber_prekey_id, kyber_prekey, kyber_prekey_signature,
  kyber_prekey_at_ms`;

// The driver takes and returns blobs as Buffers; callers get plain Uint8Arrays.
function blob(value: Uint8Array): Buffer {
  return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

function bytes(value: unknown): Uint8Array {
  return value instanceof Uint8Array ? new Uint8Array(value) : new Uint8Array();
}

function keysOf(row: Row, deviceId: string): DeviceKeysRecord {
  const signedOf = (prefix: "signed_prekey" | "kyber_prekey"): SignedPrekeyRecord => ({
    keyId: num(row.get(`${prefix}_id`)),
    publicKey: bytes(row.get(prefix)),
    signature: bytes(row.get(`${prefix}_signature`)),
    uploadedAtMs: num(row.get(`${prefix}_at_ms`)),
  });
  return {
    deviceId,
    userId: row.get("user_id") as string,
    registrationId: row.get("registration_id") as number,
    identityKey: bytes(row.get("identity_key")),
    signedPrekey: signedOf("signed_prekey"),
    kyberLastResort: signedOf("kyber_prekey"),
  };
}

function signedParams(p: SignedPrekeyRecord): unknown[] {
  return [long(p.keyId), blob(p.publicKey), blob(p.signature), long(p.uploadedAtMs)];
}

function shuffle<T>(items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}

/**
 * The key directory on ScyllaDB. Both tables are written only with LWT (see accounts.ts for why
 * LWT and plain writes are not mixed on the same cells), except the partition deletes of a
 * revoked device, whose keys are never served again.
 *
 * putKeys writes the device row first (the identity key's compare-and-set is the commit point),
 * then the one-time prekeys. A failure in between leaves the rotation applied without the new
 * one-time prekeys; the client's retry of the same upload completes it, as stored ids are skipped.
 */
export class ScyllaKeyStore implements KeyStore {
  /** The last take queued per (device, kind) partition in this process. */
  private readonly takes = new Map<string, Promise<unknown>>();

  constructor(private readonly cql: Cql) {}

  async putKeys(write: DeviceKeysWrite, maxOneTimePerKind: number): Promise<PrekeyCountsRecord> {
    // The limit is checked before anything is written, so a refused upload writes nothing.
    const fresh = new Map<PrekeyKind, OneTimePrekeyRecord[]>();
    for (const kind of KINDS) {
      const keys = (kind === "ec" ? write.oneTimeEc : write.oneTimeKyber) ?? [];
      const stored = await this.storedIds(write.deviceId, kind);
      const added = new Map<number, OneTimePrekeyRecord>();
      for (const k of keys) if (!stored.has(k.keyId) && !added.has(k.keyId)) added.set(k.keyId, k);
      if (stored.size + added.size > maxOneTimePerKind) {
        throw new StoreError(
          "limit",
          `device ${write.deviceId} would hold ${stored.size + added.size} one-time ${kind} prekeys, more than ${maxOneTimePerKind}`,
        );
      }
      fresh.set(kind, [...added.values()]);
    }
    await this.putDeviceRow(write);
    for (const kind of KINDS) await this.insertPrekeys(write.deviceId, kind, fresh.get(kind) ?? []);
    return this.countPrekeys(write.deviceId);
  }

  async getKeys(deviceId: string): Promise<DeviceKeysRecord | undefined> {
    const row = await this.cql.one(`SELECT ${KEY_COLUMNS} FROM device_keys WHERE device_id = ?`, [deviceId]);
    return row === undefined ? undefined : keysOf(row, deviceId);
  }

  async countPrekeys(deviceId: string): Promise<PrekeyCountsRecord> {
    const [ec, kyber] = await Promise.all(KINDS.map((kind) => this.count(deviceId, kind)));
    return { ec: ec ?? 0, kyber: kyber ?? 0 };
  }

  async takePrekeys(deviceId: string): Promise<PrekeyTake> {
    const [ec, kyber] = await Promise.all(KINDS.map((kind) => this.takeOne(deviceId, kind)));
    const remaining = await this.countPrekeys(deviceId);
    return { ...(ec !== undefined && { ec }), ...(kyber !== undefined && { kyber }), remaining };
  }

  async deleteKeys(deviceId: string): Promise<void> {
    await this.cql.lwt("DELETE FROM device_keys WHERE device_id = ? IF EXISTS", [deviceId]);
    // Plain partition deletes: nothing is inserted for a revoked device any more, and its keys
    // are never served again, so the clock of this delete against earlier LWTs does not matter.
    await Promise.all(
      KINDS.map((kind) =>
        this.cql.run("DELETE FROM one_time_prekeys WHERE device_id = ? AND kind = ?", [deviceId, kind]),
      ),
    );
  }

  private async putDeviceRow(write: DeviceKeysWrite): Promise<void> {
    for (let attempt = 0; attempt < PUT_ATTEMPTS; attempt++) {
      const row = await this.cql.one(
        "SELECT identity_key, registration_id FROM device_keys WHERE device_id = ?",
        [write.deviceId],
        { serial: true },
      );
      if (row === undefined) {
        if (write.signedPrekey === undefined || write.kyberLastResort === undefined) {
          throw new RangeError(`device ${write.deviceId} has no keys yet: its signed prekeys are required`);
        }
        const inserted = await this.cql.lwt(
          `INSERT INTO device_keys (device_id, ${KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            IF NOT EXISTS`,
          [
            write.deviceId,
            write.userId,
            write.registrationId,
            blob(write.identityKey),
            ...signedParams(write.signedPrekey),
            ...signedParams(write.kyberLastResort),
          ],
        );
        if (inserted.wasApplied()) return;
        continue;
      }
      if (Buffer.compare(bytes(row.get("identity_key")), write.identityKey) !== 0) {
        throw new StoreError("conflict", `device ${write.deviceId} has another identity key`);
      }
      if (row.get("registration_id") !== write.registrationId) {
        throw new StoreError("conflict", `device ${write.deviceId} has another registration id`);
      }
      const sets: string[] = [];
      const params: unknown[] = [];
      if (write.signedPrekey !== undefined) {
        sets.push(
          "signed_prekey_id = ?, signed_prekey = ?, signed_prekey_signature = ?, signed_prekey_at_ms = ?",
        );
        params.push(...signedParams(write.signedPrekey));
      }
      if (write.kyberLastResort !== undefined) {
        sets.push(
          "kyber_prekey_id = ?, kyber_prekey = ?, kyber_prekey_signature = ?, kyber_prekey_at_ms = ?",
        );
        params.push(...signedParams(write.kyberLastResort));
      }
      if (sets.length === 0) return;
      // The condition holds unless the row was deleted (revocation) and written again meanwhile.
      const updated = await this.cql.lwt(
        `UPDATE device_keys SET ${sets.join(", ")} WHERE device_id = ? IF identity_key = ? AND registration_id = ?`,
        [...params, write.deviceId, blob(write.identityKey), write.registrationId],
      );
      if (updated.wasApplied()) return;
    }
    throw new Error(`writing the keys of device ${write.deviceId} kept racing other writes`);
  }

  // Inserts keys whose ids are not stored, in single-partition conditional batches; a batch in
  // which some id appeared meanwhile is retried without the ids that are now stored.
  private async insertPrekeys(
    deviceId: string,
    kind: PrekeyKind,
    keys: OneTimePrekeyRecord[],
  ): Promise<void> {
    for (let start = 0; start < keys.length; start += INSERT_BATCH) {
      let batch = keys.slice(start, start + INSERT_BATCH);
      for (let attempt = 0; batch.length > 0; attempt++) {
        if (attempt === PUT_ATTEMPTS) {
          throw new Error(`adding one-time prekeys to device ${deviceId} kept racing other writes`);
        }
        const result = await this.cql.lwtBatch(
          // EC prekeys have no signature; binding a null would write a tombstone.
          batch.map((k) =>
            k.signature === undefined
              ? {
                  query: `INSERT INTO one_time_prekeys (device_id, kind, key_id, public_key)
                    VALUES (?, ?, ?, ?) IF NOT EXISTS`,
                  params: [deviceId, kind, long(k.keyId), blob(k.publicKey)],
                }
              : {
                  query: `INSERT INTO one_time_prekeys (device_id, kind, key_id, public_key, signature)
                    VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`,
                  params: [deviceId, kind, long(k.keyId), blob(k.publicKey), blob(k.signature)],
                },
          ),
        );
        if (result.wasApplied()) break;
        const stored = await this.storedIds(deviceId, kind);
        batch = batch.filter((k) => !stored.has(k.keyId));
      }
    }
  }

  private async storedIds(deviceId: string, kind: PrekeyKind): Promise<Set<number>> {
    const ids = new Set<number>();
    for await (const row of this.cql.pages(
      "SELECT key_id FROM one_time_prekeys WHERE device_id = ? AND kind = ?",
      [deviceId, kind],
      { serial: true },
    )) {
      ids.add(num(row.get("key_id")));
    }
    return ids;
  }

  private async count(deviceId: string, kind: PrekeyKind): Promise<number> {
    const row = await this.cql.one(
      "SELECT COUNT(*) AS n FROM one_time_prekeys WHERE device_id = ? AND kind = ?",
      [deviceId, kind],
    );
    return num(row?.get("n"));
  }

  /**
   * One take at a time per (device, kind) in this process. The keys of a kind share a partition,
   * and LWTs on one partition are serialised by Paxos whatever row they touch: concurrent takes
   * from one process only fought each other's ballots until the contention timeout (60 concurrent
   * takes of one device failed that way against Cassandra). Other processes still compete, which
   * the random candidate order spreads.
   */
  private takeOne(deviceId: string, kind: PrekeyKind): Promise<OneTimePrekeyRecord | undefined> {
    const key = `${deviceId}\n${kind}`;
    const run = (this.takes.get(key) ?? Promise.resolve()).then(() => this.claimOne(deviceId, kind));
    const settled = run.catch(() => {});
    this.takes.set(key, settled);
    void settled.then(() => {
      if (this.takes.get(key) === settled) this.takes.delete(key);
    });
    return run;
  }

  // Claims one key by deleting it conditionally: of concurrent takers of one key, only one sees
  // its delete applied. The others try the next candidate, then read again. A delete that timed
  // out may or may not have applied: its key is never handed out by this take (a one-time key lost
  // is harmless; one handed out twice is not), and if the delete did not apply a later take gets it.
  private async claimOne(deviceId: string, kind: PrekeyKind): Promise<OneTimePrekeyRecord | undefined> {
    for (let attempt = 0; attempt < TAKE_ATTEMPTS; attempt++) {
      const result = await this.cql.run(
        `SELECT key_id, public_key, signature FROM one_time_prekeys WHERE device_id = ? AND kind = ?
          LIMIT ${TAKE_CANDIDATES}`,
        [deviceId, kind],
      );
      const rows = result.rows ?? [];
      if (rows.length === 0) return undefined;
      for (const row of shuffle([...rows])) {
        const keyId = num(row.get("key_id"));
        let deleted: types.ResultSet;
        try {
          deleted = await this.cql.lwt(
            "DELETE FROM one_time_prekeys WHERE device_id = ? AND kind = ? AND key_id = ? IF EXISTS",
            [deviceId, kind, long(keyId)],
          );
        } catch (err) {
          // Whether the delete applied is unknown (outcome.ts): the key may be gone, so it is never
          // handed out; at worst one key is wasted, never given twice. The next candidate is tried.
          if (unknownOutcome(err)) continue;
          throw err;
        }
        if (!deleted.wasApplied()) continue;
        const signature = row.get("signature") as Buffer | null;
        return {
          keyId,
          publicKey: bytes(row.get("public_key")),
          ...(signature !== null && signature !== undefined && { signature: bytes(signature) }),
        };
      }
      await sleep(Math.random() * 5 * (attempt + 1));
    }
    throw new Error(`taking a one-time ${kind} prekey of device ${deviceId} kept losing to concurrent takes`);
  }
}
