import type { Logger } from "../common/log.js";
import type { AccountStore, AvatarRecord } from "../store/types.js";

/**
 * Users' avatars as the accounts service keeps them: only which media object holds each one's
 * ciphertext, and its length. The media service owns the objects and the rules (who may set,
 * who may see); this is its record, read and swapped over DirectoryService.
 */
export class Avatars {
  constructor(
    private readonly store: AccountStore,
    private readonly log: Logger,
  ) {}

  /** The user's avatar, or undefined. */
  of(userId: string): Promise<AvatarRecord | undefined> {
    return this.store.getAvatar(userId);
  }

  /**
   * Replaces (or, with undefined, removes) the user's avatar; returns the one replaced, whose
   * object the caller deletes. StoreError "not_found" for an unknown user.
   */
  async swap(userId: string, avatar: AvatarRecord | undefined): Promise<AvatarRecord | undefined> {
    const previous = await this.store.swapAvatar(userId, avatar);
    this.log.info(
      { userId, objectId: avatar?.objectId, replaced: previous?.objectId },
      avatar === undefined ? "avatar removed" : "avatar set",
    );
    return previous;
  }
}
