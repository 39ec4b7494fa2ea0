import { randomInt } from "node:crypto";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import { storageAt } from "../../storage/file.js";
import type { ProfileStorage } from "../../storage/port.js";
import { JsonDoc, RecordSet } from "../../storage/records.js";
import { type IdentityFile, type LocalFile, MAX_PREKEY_ID } from "./documents.js";
import { IdentityStore } from "./identity.js";
import { KyberPreKeyFileStore, PreKeyFileStore, SignedPreKeyFileStore } from "./prekeys.js";
import { SenderKeyFileStore } from "./sender-keys.js";
import { SessionFileStore } from "./sessions.js";
import type { IdentityChangeEvent } from "./types.js";

/** Options of SignalStores.open. */
export interface SignalStoresOptions {
  /** Called on every identity change of a contact's device (accepted or refused). */
  onIdentityChange?: (event: IdentityChangeEvent) => void;
}

/** The folder of the Signal stores in a profile's storage. */
export const SIGNAL_PREFIX = "signal/";

/**
 * Every libsignal store of one device, persisted under `signal/` in the profile's storage (with the
 * file engine, the folder `<profile>/signal/`):
 *
 * - `local.json`: our identity key pair, registration id, prekey id counters;
 * - `identities.json`: other devices' identity keys with their verified flags;
 * - `sessions/`, `prekeys/`, `signed-prekeys/`, `kyber-prekeys/`, `kyber-used/`, `sender-keys/`:
 *   one entry per record, named by the hex of its key.
 *
 * Every write is atomic and durable before the store call returns (the storage port's promise), so
 * when libsignal's encrypt or decrypt resolves, the state it depends on is stored. Everything is
 * also cached in memory; reads never touch the storage.
 */
export class SignalStores {
  private constructor(
    /** The profile's storage. */
    readonly storage: ProfileStorage,
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

  /** Opens the stores of a profile (a directory or a storage engine), creating our identity on first use. */
  static async open(
    profile: string | ProfileStorage,
    options: SignalStoresOptions = {},
  ): Promise<SignalStores> {
    const storage = storageAt(profile);
    let identityCreated = false;
    const local = await JsonDoc.open<LocalFile>(storage, `${SIGNAL_PREFIX}local.json`, () => {
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
    const identities = await JsonDoc.open<IdentityFile>(storage, `${SIGNAL_PREFIX}identities.json`, () => ({
      version: 1,
      identities: {},
    }));
    const [sessions, preKeys, signed, kyber, kyberUsed, senderKeys] = await Promise.all(
      ["sessions", "prekeys", "signed-prekeys", "kyber-prekeys", "kyber-used", "sender-keys"].map((name) =>
        RecordSet.open(storage, `${SIGNAL_PREFIX}${name}/`),
      ),
    );
    const identity = new IdentityStore(local, identities);
    if (options.onIdentityChange) identity.onChange(options.onIdentityChange);
    return new SignalStores(
      storage,
      local,
      identity,
      new SessionFileStore(sessions as RecordSet),
      new PreKeyFileStore(preKeys as RecordSet),
      new SignedPreKeyFileStore(signed as RecordSet),
      new KyberPreKeyFileStore(kyber as RecordSet, kyberUsed as RecordSet, local),
      new SenderKeyFileStore(senderKeys as RecordSet),
      identityCreated,
    );
  }

  /** Where the stores live, for messages (`<profile>/signal` with the file engine). */
  get location(): string {
    return `${this.storage.location}/signal`;
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
