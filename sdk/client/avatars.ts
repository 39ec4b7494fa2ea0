import { Code, ConnectError } from "@connectrpc/connect";
import {
  decryptAvatar,
  encryptAvatar,
  MAX_AVATAR_BYTES,
  MAX_AVATAR_CIPHERTEXT_BYTES,
} from "../crypto/avatars.js";
import { getObject, putObject } from "../media-http.js";
import type { ClientContext } from "./context.js";

/** A user's avatar as this device opened it. */
export interface Avatar {
  /** The media object it came from; a new avatar has a new one, so apps cache by it. */
  objectId: string;
  /** The picture, decrypted and authenticated. */
  data: Uint8Array;
}

/**
 * Profile avatars (client.avatars): encrypted on this device under a key derived from its
 * profile key, uploaded through the media service as an object of the user, never of a
 * conversation. Who may download one is the owner's `profile` privacy setting; the profile key
 * itself reaches other devices only inside the encrypted content this device sends.
 */
export class Avatars {
  constructor(private readonly ctx: ClientContext) {}

  /**
   * Sets this user's avatar (the picture's bytes, any format the app chooses; at most
   * 1,048,548 bytes): encrypted here, uploaded, then made the avatar, which deletes the previous
   * one on the server. Needs encryption: without it no contact ever gets the key.
   */
  async set(picture: Uint8Array): Promise<{ objectId: string; lengthBytes: number }> {
    this.ctx.requireE2ee();
    if (picture.length === 0)
      throw new ConnectError("an avatar needs at least one byte", Code.InvalidArgument);
    if (picture.length > MAX_AVATAR_BYTES) {
      throw new ConnectError(
        `the avatar is ${picture.length} bytes; at most ${MAX_AVATAR_BYTES} bytes are allowed`,
        Code.InvalidArgument,
      );
    }
    const userId = this.ctx.profile.credentials.userId;
    const ciphertext = encryptAvatar(await this.ctx.profileKeys.own(), userId, picture);
    const media = this.ctx.conn.media;
    const upload = await media.createAvatarUpload({ lengthBytes: BigInt(ciphertext.length) });
    await putObject(upload.uploadUrl, ciphertext, ciphertext.length);
    await media.setAvatar({ objectId: upload.objectId });
    return { objectId: upload.objectId, lengthBytes: ciphertext.length };
  }

  /** Removes this user's avatar (its object is deleted on the server); false when there was none. */
  async remove(): Promise<boolean> {
    const { removed } = await this.ctx.conn.media.removeAvatar({});
    return removed;
  }

  /**
   * A user's avatar (this user's own included), downloaded and decrypted; undefined when they
   * have none or their `profile` setting hides it from this user, which the server answers alike.
   * Throws AttachmentError "authentication" when no profile key this device holds opens it: the
   * device that set it has not sent this device any encrypted content yet.
   */
  async of(userId: string): Promise<Avatar | undefined> {
    let found: { objectId: string; downloadUrl: string; lengthBytes: bigint };
    try {
      found = await this.ctx.conn.media.getAvatar({ userId });
    } catch (err) {
      if (ConnectError.from(err).code === Code.NotFound) return undefined;
      throw err;
    }
    if (found.lengthBytes > BigInt(MAX_AVATAR_CIPHERTEXT_BYTES)) {
      throw new ConnectError(
        `the server announced an avatar of ${found.lengthBytes} bytes; refused`,
        Code.DataLoss,
      );
    }
    // A store that sends more than announced is cut off there.
    const ciphertext = (await getObject(
      found.downloadUrl,
      undefined,
      Number(found.lengthBytes),
    )) as Uint8Array;
    const keys = await this.ctx.profileKeys.of(userId, this.ctx.profile.credentials.userId);
    return { objectId: found.objectId, data: decryptAvatar(keys, userId, ciphertext) };
  }
}
