import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { audienceFromWire } from "../accounts/index.js";
import { InvalidInputError, NotFoundError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { SequencerClient } from "../sequencer/index.js";
import type { CreatedDownload, CreatedUpload, Media } from "./media.js";

/**
 * The largest avatar ciphertext, in bytes (1 MiB): a profile picture, not a file. With the
 * SDK's 28 bytes of IV and tag, the picture itself may be 1,048,548 bytes.
 */
export const MAX_AVATAR_BYTES = 1024 * 1024;

/** What the avatar rules ask the accounts service: the avatar record, privacy setting and blocks. */
export type AvatarDirectory = Pick<
  Client<typeof DirectoryService>,
  "getUserAvatar" | "setUserAvatar" | "getUserPrivacy" | "getBlockedUsers"
>;

/** What they ask the sequencer: whether two users have a direct conversation. */
export type ContactSource = Pick<SequencerClient, "findContacts">;

/** A user's avatar as GetAvatar answers it. */
export interface AvatarDownload extends CreatedDownload {
  /** The avatar's object; it changes with every new avatar. */
  objectId: string;
}

/**
 * Profile avatars: media objects bound to their user rather than to a conversation. The server
 * holds the ciphertext (here) and the object id and length (the accounts service's store); the
 * key comes from the uploading device's profile key, which only ever travels inside end-to-end
 * encrypted content (docs/encryption.md, "Avatars").
 *
 * Who may download one is the owner's `profile` privacy setting, the one that hides the display
 * name: everyone, contacts (a direct conversation) or nobody; and never a user the owner blocked
 * (as WhatsApp hides a profile photo from them). A viewer refused gets the very NOT_FOUND a user
 * without an avatar gives, so hidden cannot be told from absent.
 */
export class AvatarRules {
  constructor(
    private readonly media: Media,
    private readonly directory: AvatarDirectory,
    private readonly contacts: ContactSource,
    private readonly log: Logger,
  ) {}

  /** The largest avatar this server takes: MAX_AVATAR_BYTES, or the attachment maximum if smaller. */
  get maxBytes(): number {
    return Math.min(MAX_AVATAR_BYTES, this.media.limits.maxBytes);
  }

  /** Reserves an avatar object for the user; see MediaService.CreateAvatarUpload. */
  async createUpload(userId: string, lengthBytes: bigint): Promise<CreatedUpload> {
    if (lengthBytes < 1n) throw new InvalidInputError("length_bytes: must be at least 1");
    if (lengthBytes > BigInt(this.maxBytes)) {
      throw new InvalidInputError(
        `length_bytes: ${lengthBytes} exceeds the maximum avatar size of ${this.maxBytes} bytes`,
      );
    }
    return this.media.reserve(userId, Number(lengthBytes), { avatar: true });
  }

  /**
   * Makes an uploaded avatar object the user's avatar and deletes the one it replaces. The
   * object is claimed first (so the sweep keeps it), then recorded; if recording fails a new
   * object is deleted again, so nothing claimed is left unreferenced.
   */
  async set(userId: string, objectId: string): Promise<number> {
    const record = await this.media.store.getRecord(objectId);
    if (record === undefined || record.avatarOfUserId !== userId) {
      throw new NotFoundError(`no avatar upload ${objectId} of yours`);
    }
    const claimed = await this.media.claim(objectId);
    let previous: string | undefined;
    try {
      const res = await this.directory.setUserAvatar({
        userId,
        avatar: { objectId, lengthBytes: BigInt(claimed.lengthBytes) },
      });
      previous = res.previous?.objectId;
    } catch (err) {
      // Claimed before this call, it may be the current avatar (set again): keep it then.
      if (record.claimedAtMs === 0) await this.media.deleteObject(objectId).catch(() => {});
      throw err;
    }
    if (previous !== undefined && previous !== objectId) await this.deleteReplaced(userId, previous);
    return claimed.lengthBytes;
  }

  /** Removes the user's avatar and deletes its object; true when there was one. */
  async remove(userId: string): Promise<boolean> {
    const { previous } = await this.directory.setUserAvatar({ userId });
    if (previous === undefined) return false;
    await this.deleteReplaced(userId, previous.objectId);
    return true;
  }

  /**
   * A download URL for `owner`'s avatar, when `viewer` may see it. NOT_FOUND, with one message,
   * when there is none, when the owner's profile setting does not admit the viewer, and for an
   * unknown user: the three answers are the same bytes.
   */
  async get(viewer: string, owner: string): Promise<AvatarDownload> {
    const hidden = () => new NotFoundError(`user ${owner} has no avatar`);
    const { avatar } = await this.directory.getUserAvatar({ userId: owner });
    if (avatar === undefined || avatar.objectId === "") throw hidden();
    if (viewer !== owner && !(await this.admits(owner, viewer))) throw hidden();
    const record = await this.media.store.getRecord(avatar.objectId);
    // A record the accounts store points at but the media store lost reads as no avatar.
    if (record === undefined || record.avatarOfUserId !== owner) throw hidden();
    const download = await this.media.presignDownload(record);
    return { ...download, objectId: record.objectId };
  }

  /**
   * Whether the owner's `profile` setting admits the viewer ("contacts": a direct conversation)
   * and the owner has not blocked them.
   */
  private async admits(owner: string, viewer: string): Promise<boolean> {
    const blocks = await this.directory.getBlockedUsers({ userIds: [owner] });
    if (blocks.users.some((u) => u.userId === owner && u.blockedUserIds.includes(viewer))) return false;
    const { users } = await this.directory.getUserPrivacy({ userIds: [owner] });
    const wire = users.find((u) => u.userId === owner)?.settings?.profile ?? 0;
    // An unknown audience (a newer server's) hides, as "nobody" would.
    const audience = audienceFromWire(wire) ?? "nobody";
    if (audience === "everyone") return true;
    if (audience === "nobody") return false;
    const { directContactUserIds } = await this.contacts.findContacts({
      userId: viewer,
      peerUserIds: [owner],
    });
    return directContactUserIds.includes(owner);
  }

  private async deleteReplaced(userId: string, objectId: string): Promise<void> {
    await this.media.deleteObject(objectId);
    this.log.info({ userId, objectId }, "replaced avatar deleted");
  }
}
