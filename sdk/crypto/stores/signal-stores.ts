import { randomInt } from "node:crypto";
import { join } from "node:path";
import { IdentityKeyPair } from "@signalapp/libsignal-client";
import { ensureDir, JsonDoc, RecordDir } from "../files.js";
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
