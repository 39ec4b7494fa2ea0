import { create, toBinary } from "@bufbuild/protobuf";
import { SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import { newProfileKey, PROFILE_KEY_BYTES } from "../crypto/avatars.js";
import type { ProfileStorage } from "../storage/port.js";

/** This device's own profile key, in the profile's storage. */
const OWN = "profile-keys/own";
/** Profile keys received from other devices: `profile-keys/peers/<userId>/<deviceId>`. */
const PEERS = "profile-keys/peers/";

/** Received keys remembered in memory (to skip rewriting a key already stored); storage holds all. */
const MAX_REMEMBERED = 10_000;

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Profile keys (docs/encryption.md, "Avatars"): this device's own, created on first use and
 * never sent anywhere but inside encrypted content, and those received from other devices (the
 * user's own siblings included) in the SealedContent of their messages. A device's avatar is
 * encrypted under a key derived from its profile key; a viewer tries the keys of the owner's
 * devices it holds.
 */
export class ProfileKeys {
  private ownKey: Promise<Uint8Array> | undefined;
  private readonly remembered = new Map<string, Uint8Array>();

  constructor(private readonly storage: ProfileStorage) {}

  /** This device's profile key, created (and stored) on first use. */
  own(): Promise<Uint8Array> {
    this.ownKey ??= (async () => {
      const stored = await this.storage.get(OWN);
      if (stored !== undefined && stored.length === PROFILE_KEY_BYTES) return stored;
      const key = newProfileKey();
      await this.storage.put([[OWN, key]]);
      return key;
    })();
    // A failed read or write is tried again next time rather than remembered.
    this.ownKey.catch(() => {
      this.ownKey = undefined;
    });
    return this.ownKey;
  }

  /**
   * A content with this device's profile key added. Protobuf merges concatenated messages, so the
   * field is appended to the encoded content without decoding it.
   */
  async attach(content: Uint8Array): Promise<Uint8Array> {
    const field = toBinary(
      SealedContentSchema,
      create(SealedContentSchema, { profileKey: await this.own() }),
    );
    const out = new Uint8Array(content.length + field.length);
    out.set(content);
    out.set(field, content.length);
    return out;
  }

  /** Keeps the profile key a device sent; a key of the wrong length is ignored. */
  async received(userId: string, deviceId: string, key: Uint8Array): Promise<void> {
    if (key.length !== PROFILE_KEY_BYTES) return;
    const name = `${PEERS}${userId}/${deviceId}`;
    const known = this.remembered.get(name);
    if (known !== undefined && equal(known, key)) return;
    await this.storage.put([[name, new Uint8Array(key)]]);
    this.remembered.delete(name);
    this.remembered.set(name, new Uint8Array(key));
    if (this.remembered.size > MAX_REMEMBERED) {
      const oldest = this.remembered.keys().next();
      if (!oldest.done) this.remembered.delete(oldest.value);
    }
  }

  /** The profile keys of a user's devices this device holds (its own first, for its own user). */
  async of(userId: string, ownUserId: string): Promise<Uint8Array[]> {
    const keys = (await this.storage.list(`${PEERS}${userId}/`)).map(([, v]) => v);
    return userId === ownUserId ? [await this.own(), ...keys] : keys;
  }
}
