import { createHash } from "node:crypto";
import {
  KyberPreKeyRecord,
  KyberPreKeyStore,
  PreKeyRecord,
  PreKeyStore,
  type PublicKey,
  SignedPreKeyRecord,
  SignedPreKeyStore,
} from "@signalapp/libsignal-client";
import type { JsonDoc, RecordSet } from "../../storage/records.js";
import type { LocalFile } from "./documents.js";

/** One-time EC prekeys (private halves); used ones are removed by libsignal. */
export class PreKeyFileStore extends PreKeyStore {
  constructor(private readonly records: RecordSet) {
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
  constructor(private readonly records: RecordSet) {
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
    private readonly records: RecordSet,
    private readonly used: RecordSet,
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
