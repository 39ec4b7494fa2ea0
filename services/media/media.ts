import { Code, ConnectError } from "@connectrpc/connect";
import { defaultMediaLimits, type MediaLimits } from "../common/config.js";
import {
  ConflictError,
  InvalidInputError,
  isDomainError,
  LimitError,
  NotFoundError,
  PermissionError,
} from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { RateLimiter } from "../common/rate-limit/types.js";
import type { SequencerClient } from "../sequencer/index.js";
import { newObjectId, type ObjectRecord, type ObjectStore } from "./types.js";

/** The part of the sequencer the media service asks: who is in a conversation. */
export type MembershipSource = Pick<SequencerClient, "getMembers">;

// The limits are settings: their type, documentation and defaults live with the configuration
// (services/common/config/media.ts), which validates them; the service uses them as given.
export type { MediaLimits };

/** The defaults: 100 MiB, 15-minute URLs, 24 hours to claim, 1 GiB a day and 64 in flight per user. */
export const DEFAULT_MEDIA_LIMITS: MediaLimits = defaultMediaLimits;

/** Users whose in-flight uploads are remembered at most; the least recently active are forgotten. */
const MAX_TRACKED_UPLOADERS = 100_000;

/** Where the media service reports refusals (the process's counter and log). */
export interface MediaRefusals {
  refuse(reason: string, message: string, fields?: Record<string, string | number | undefined>): void;
}

/** What the upload quota needs from the process. */
export interface MediaQuotaOptions {
  /** Keeps the bytes-per-day buckets; shared by every media process on Redis. None: no byte quota. */
  limiter?: RateLimiter | undefined;
  /** Counts and logs refusals; logged here when absent. */
  refusals?: MediaRefusals | undefined;
}

/**
 * Uploads created and not yet claimed, per user: objectId -> when its slot frees (the sweep
 * deadline). Memory is bounded by MAX_TRACKED_UPLOADERS users of at most maxUploadsInFlight each.
 */
class UploadsInFlight {
  private readonly byUser = new Map<string, Map<string, number>>();

  /** The user's live slots, expired ones dropped. */
  count(userId: string, nowMs: number): number {
    const slots = this.byUser.get(userId);
    if (slots === undefined) return 0;
    for (const [objectId, until] of slots) if (until <= nowMs) slots.delete(objectId);
    if (slots.size === 0) this.byUser.delete(userId);
    return slots.size;
  }

  add(userId: string, objectId: string, untilMs: number): void {
    const slots = this.byUser.get(userId) ?? new Map<string, number>();
    // Delete then set: Map order is recency, the trim below forgets the oldest users first.
    this.byUser.delete(userId);
    this.byUser.set(userId, slots);
    slots.set(objectId, untilMs);
    if (this.byUser.size > MAX_TRACKED_UPLOADERS) {
      const oldest = this.byUser.keys().next();
      if (!oldest.done) this.byUser.delete(oldest.value);
    }
  }

  remove(userId: string, objectId: string): void {
    const slots = this.byUser.get(userId);
    if (slots === undefined) return;
    slots.delete(objectId);
    if (slots.size === 0) this.byUser.delete(userId);
  }
}

/** Objects deleted per sweep round; the rest wait for the next round. */
const SWEEP_BATCH = 500;

/** A new upload. */
export interface CreatedUpload {
  objectId: string;
  uploadUrl: string;
  /** Milliseconds since the Unix epoch. */
  expiresAtMs: number;
  /** Deleted unless claimed by then, in milliseconds since the Unix epoch. */
  claimByMs: number;
}

/** A download URL. */
export interface CreatedDownload {
  downloadUrl: string;
  /** Milliseconds since the Unix epoch. */
  expiresAtMs: number;
  lengthBytes: number;
}

function formatBytes(n: number): string {
  if (n % (1024 * 1024) === 0) return `${n} bytes (${n / (1024 * 1024)} MiB)`;
  return `${n} bytes`;
}

/**
 * The media service's rules: sizes, conversation binding, membership, claiming and the sweep
 * of unclaimed uploads. It sees ciphertext lengths and timing, never content.
 *
 * Claiming is explicit because the server cannot see references: the pointer to an object
 * travels inside an end-to-end encrypted message. The sender's SDK calls ClaimUpload once the
 * message is acknowledged, and a member's first download claims it too, which covers a sender
 * that crashed between the two. An object nobody claims within unclaimedTtlMs is deleted.
 */
export class Media {
  private readonly now: () => number;
  /** Claims and sweep deletions of one object run one at a time in this process. */
  private readonly locks = new Map<string, Promise<unknown>>();
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping: Promise<number> | undefined;
  private readonly inFlight = new UploadsInFlight();
  private readonly refusals: MediaRefusals;

  constructor(
    readonly store: ObjectStore,
    private readonly members: MembershipSource,
    private readonly log: Logger,
    readonly limits: MediaLimits = DEFAULT_MEDIA_LIMITS,
    now?: () => number,
    private readonly quota: MediaQuotaOptions = {},
  ) {
    this.now = now ?? Date.now;
    this.refusals = quota.refusals ?? {
      refuse: (reason, message, fields) => log.info({ refusal: reason, ...fields }, message),
    };
  }

  /**
   * The per-user upload quota: objects in flight, then bytes per day (charged on the declared
   * length, so a refusal of the first spends none of the second). A LimitError, with a retry
   * hint when the bytes will be available again.
   */
  private async requireQuota(userId: string, lengthBytes: number, now: number): Promise<void> {
    const { maxUploadsInFlight, uploadBytesPerDay } = this.limits;
    if (maxUploadsInFlight > 0 && this.inFlight.count(userId, now) >= maxUploadsInFlight) {
      const message = `at most ${maxUploadsInFlight} uploads may be in flight (created and not yet claimed) per user; claim or wait for earlier ones`;
      this.refusals.refuse("upload_in_flight", message, { userId, code: "resource_exhausted" });
      throw new LimitError(message);
    }
    const limiter = this.quota.limiter;
    if (limiter === undefined || uploadBytesPerDay <= 0) return;
    const limit = { name: "upload-bytes", rate: uploadBytesPerDay / 86_400, burst: uploadBytesPerDay };
    const wait = await limiter.take(limit, userId, lengthBytes);
    if (wait <= 0) return;
    const retry = Number.isFinite(wait) ? Math.ceil(wait) : 86_400_000;
    const message = `uploads are limited to ${formatBytes(uploadBytesPerDay)} per user per day; retry in ${retry} ms`;
    this.refusals.refuse("upload_bytes_per_day", message, {
      userId,
      lengthBytes,
      code: "resource_exhausted",
    });
    throw new LimitError(message, { retryAfterMs: retry });
  }

  /** Refuses a user who is not a current member of the conversation. */
  private async requireMember(userId: string, conversationId: string): Promise<void> {
    let userIds: string[];
    try {
      ({ userIds } = await this.members.getMembers({ conversationId }));
    } catch (err) {
      // Whether a conversation exists is not the caller's business unless they are in it. The
      // sequencer answers over Connect (a ConnectError); an in-process stand-in may throw its own.
      if ((err instanceof ConnectError && err.code === Code.NotFound) || isDomainError(err, "not_found")) {
        userIds = [];
      } else throw err;
    }
    if (!userIds.includes(userId)) {
      throw new PermissionError(`not a member of conversation ${conversationId}`);
    }
  }

  private async withLock<T>(objectId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(objectId) ?? Promise.resolve();
    const run = previous.then(fn, fn);
    const tail = run.catch(() => {});
    this.locks.set(objectId, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(objectId) === tail) this.locks.delete(objectId);
    }
  }

  /** Reserves an object of an exact length in a conversation and returns its upload URL. */
  async createUpload(userId: string, conversationId: string, lengthBytes: bigint): Promise<CreatedUpload> {
    const max = this.limits.maxBytes;
    if (lengthBytes < 1n) throw new InvalidInputError("length_bytes: must be at least 1");
    if (lengthBytes > BigInt(max)) {
      throw new InvalidInputError(
        `length_bytes: ${lengthBytes} exceeds the maximum attachment size of ${formatBytes(max)}`,
      );
    }
    await this.requireMember(userId, conversationId);
    return this.reserve(userId, Number(lengthBytes), { conversationId });
  }

  /**
   * Reserves an object of a checked length, bound to a conversation or (an avatar) to its
   * uploader, within the uploader's quota, and returns its upload URL.
   */
  async reserve(
    userId: string,
    lengthBytes: number,
    binding: { conversationId: string } | { avatar: true },
  ): Promise<CreatedUpload> {
    const now = this.now();
    await this.requireQuota(userId, lengthBytes, now);
    const record: ObjectRecord = {
      objectId: newObjectId(),
      conversationId: "conversationId" in binding ? binding.conversationId : "",
      ...("avatar" in binding && { avatarOfUserId: userId }),
      uploaderUserId: userId,
      lengthBytes,
      createdAtMs: now,
      claimedAtMs: 0,
    };
    // The record is durable before the URL exists, so whatever is uploaded is known to the sweep.
    await this.store.putRecord(record);
    this.inFlight.add(userId, record.objectId, now + this.limits.unclaimedTtlMs);
    const put = await this.store.presignPut(
      record.objectId,
      record.lengthBytes,
      this.limits.uploadUrlTtlSeconds,
      now,
    );
    return {
      objectId: record.objectId,
      uploadUrl: put.url,
      expiresAtMs: put.expiresAtMs,
      claimByMs: now + this.limits.unclaimedTtlMs,
    };
  }

  /** A download URL for an object whose access the caller has checked. */
  async presignDownload(record: ObjectRecord): Promise<CreatedDownload> {
    const get = await this.store.presignGet(
      record.objectId,
      record.lengthBytes,
      this.limits.downloadUrlTtlSeconds,
      this.now(),
    );
    return { downloadUrl: get.url, expiresAtMs: get.expiresAtMs, lengthBytes: record.lengthBytes };
  }

  /** Deletes an object and its record (one at a time with claims and the sweep). */
  async deleteObject(objectId: string): Promise<void> {
    await this.withLock(objectId, () => this.store.delete(objectId));
  }

  /**
   * DeleteAttachments: the caller's own objects of a conversation, named by the device that
   * deleted their message for everyone (the server cannot see which objects a message points
   * at). All are checked before any is deleted: each bound to the conversation (NOT_FOUND
   * otherwise, as for a download) and uploaded by the caller (PERMISSION_DENIED). Objects already
   * gone are skipped, so a retry succeeds; returns the ids deleted now.
   */
  async deleteAttachments(
    userId: string,
    conversationId: string,
    objectIds: readonly string[],
  ): Promise<string[]> {
    await this.requireMember(userId, conversationId);
    const present: string[] = [];
    for (const objectId of objectIds) {
      const record = await this.store.getRecord(objectId);
      if (record === undefined) continue;
      if (record.conversationId !== conversationId) {
        throw new NotFoundError(`object ${objectId} not found in conversation ${conversationId}`);
      }
      if (record.uploaderUserId !== userId) {
        throw new PermissionError(
          `object ${objectId} was uploaded by another member; only its uploader may delete it`,
        );
      }
      present.push(objectId);
    }
    for (const objectId of present) await this.deleteObject(objectId);
    return present;
  }

  /**
   * The object's record for a member of the conversation it is bound to. An object bound to
   * another conversation is reported as missing, so ids cannot be probed across conversations.
   */
  private async boundRecord(userId: string, objectId: string, conversationId: string): Promise<ObjectRecord> {
    await this.requireMember(userId, conversationId);
    const record = await this.store.getRecord(objectId);
    if (record === undefined || record.conversationId !== conversationId) {
      throw new NotFoundError(`object ${objectId} not found in conversation ${conversationId}`);
    }
    return record;
  }

  /**
   * Checks that exactly the declared length was uploaded; a mismatch (possible with the S3
   * engine, which cannot bound a presigned PUT) is deleted.
   */
  private async requireUploaded(record: ObjectRecord): Promise<void> {
    const stat = await this.store.stat(record.objectId);
    if (stat === undefined) {
      // A claim checked the bytes, so a claimed record without them is being deleted (a delete
      // removes the bytes first and the record last, or was cut short and the sweep finishes it)
      // or lost by the store: for the client the object is gone, not waiting for its upload.
      if (record.claimedAtMs !== 0) throw new NotFoundError(`object ${record.objectId} is no longer stored`);
      throw new ConflictError(`object ${record.objectId} has not been uploaded yet`);
    }
    if (stat.lengthBytes !== record.lengthBytes) {
      this.log.warn(
        { objectId: record.objectId, declared: record.lengthBytes, stored: stat.lengthBytes },
        "uploaded object has the wrong length; deleted",
      );
      await this.store.delete(record.objectId);
      throw new ConflictError(
        `object ${record.objectId} was uploaded with ${stat.lengthBytes} bytes instead of the declared ${record.lengthBytes}; it has been deleted`,
      );
    }
  }

  /**
   * Marks an uploaded object as referenced, so the sweep keeps it. Idempotent. Used by the
   * ClaimUpload RPC and by the first download; callers have checked membership.
   */
  async claim(objectId: string): Promise<ObjectRecord> {
    return this.withLock(objectId, async () => {
      const record = await this.store.getRecord(objectId);
      if (record === undefined) throw new NotFoundError(`object ${objectId} not found`);
      await this.requireUploaded(record);
      if (record.claimedAtMs !== 0) return record;
      const now = this.now();
      // The server cannot see which message points at the object, only its conversation: an
      // object claimed (right after its message is acknowledged) while the conversation's timer
      // is on goes that long after, with its message.
      // An avatar has no conversation and no timer: it stays until replaced or removed.
      const { disappearingSeconds } =
        record.avatarOfUserId !== undefined
          ? { disappearingSeconds: 0 }
          : await this.members.getMembers({ conversationId: record.conversationId });
      const claimed: ObjectRecord = {
        ...record,
        claimedAtMs: now,
        ...(disappearingSeconds > 0 && { expiresAtMs: now + disappearingSeconds * 1000 }),
      };
      await this.store.putRecord(claimed);
      this.inFlight.remove(record.uploaderUserId, objectId);
      return claimed;
    });
  }

  /** ClaimUpload: a member claims an object of their conversation. */
  async claimUpload(userId: string, objectId: string, conversationId: string): Promise<ObjectRecord> {
    await this.boundRecord(userId, objectId, conversationId);
    return this.claim(objectId);
  }

  /** A download URL for a current member of the object's conversation; claims the object. */
  async createDownload(userId: string, objectId: string, conversationId: string): Promise<CreatedDownload> {
    const record = await this.boundRecord(userId, objectId, conversationId);
    if (record.claimedAtMs === 0) await this.claim(objectId);
    // Checked on every download too: an S3 presigned PUT stays usable until it expires, so an
    // object claimed early could still be replaced with another length.
    else await this.requireUploaded(record);
    return this.presignDownload(record);
  }

  /**
   * Deletes uploads left unclaimed for longer than unclaimedTtlMs, and attachments whose
   * disappearing message expired; returns how many.
   */
  sweep(): Promise<number> {
    this.sweeping ??= this.sweepOnce().finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  private async sweepOnce(): Promise<number> {
    const cutoff = this.now() - this.limits.unclaimedTtlMs;
    let deleted = 0;
    for (const stale of await this.store.listUnclaimed(cutoff, SWEEP_BATCH)) {
      await this.withLock(stale.objectId, async () => {
        // Read again under the lock: a claim may have landed since the listing.
        const record = await this.store.getRecord(stale.objectId);
        if (record === undefined || record.claimedAtMs !== 0 || record.createdAtMs >= cutoff) return;
        await this.store.delete(record.objectId);
        this.inFlight.remove(record.uploaderUserId, record.objectId);
        deleted++;
      });
    }
    if (deleted > 0) this.log.info({ deleted }, "unclaimed uploads deleted");
    let expired = 0;
    const now = this.now();
    for (const due of await this.store.listExpired(now, SWEEP_BATCH)) {
      await this.withLock(due.objectId, async () => {
        await this.store.delete(due.objectId);
        expired++;
      });
    }
    if (expired > 0) this.log.info({ deleted: expired }, "attachments of disappeared messages deleted");
    return deleted + expired;
  }

  /** Runs the sweep every intervalMs until close. */
  startSweeper(intervalMs: number): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => {
      this.sweep().catch((err: unknown) => this.log.warn({ err }, "media sweep failed"));
    }, intervalMs);
    this.sweeper.unref();
  }

  /** Stops the sweeper and waits for a sweep in progress; closes the store. */
  async close(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    await this.sweeping?.catch(() => {});
    await this.store.close();
  }
}
