import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AttachmentPointerSchema,
  ContentKind,
  type HistoryTransfer,
  HistoryTransferSchema,
  SealedContentSchema,
} from "../../gen/switchboard/v1/content_pb.js";
import type { Conversation } from "../../gen/switchboard/v1/conversations_pb.js";
import { ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { DeviceMismatchSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import {
  type HistoryBundle,
  HistoryBundleSchema,
  type HistoryEntry,
} from "../../gen/switchboard/v1/history_pb.js";
import {
  ATTACHMENT_OVERHEAD,
  AttachmentError,
  decryptAttachment,
  encryptAttachment,
} from "../crypto/attachments.js";
import type { HistoryImportedEvent } from "../history-types.js";
import { getObject, putObject } from "../media-http.js";
import type { IncomingEntry } from "../types.js";
import { newClientMsgId } from "./bodies.js";
import type { ClientContext } from "./context.js";
import {
  BundleBuilder,
  bounded,
  DEFAULT_HISTORY_MAX_BYTES,
  DEFAULT_HISTORY_MAX_ENTRIES,
  HISTORY_MAX_BYTES,
  HISTORY_MAX_ENTRIES,
  HistoryError,
  type HistorySendOptions,
  importedToIncoming,
  parseBundle,
  sinceOf,
} from "./history-bundle.js";

export { HistoryError, type HistorySendOptions } from "./history-bundle.js";

/**
 * The title of a transfer conversation: a group whose one member is the user, made for one
 * history transfer and left by the receiving device once it is done. The server sees the title;
 * it says no more than the group's shape already does.
 */
export const TRANSFER_TITLE = "history transfer";
/** Entries read per GetHistory page while building a bundle (the server's maximum). */
const PAGE = 1000;
/** Where transfers being imported are kept in the profile, by media object id. */
const PENDING = "history-pending/";

/** A transfer offered to this device and not yet imported or refused. */
interface PendingTransfer {
  conversationId: string;
  fromDeviceId: string;
  /** The HistoryTransfer (with the bundle's key), base64. */
  transfer: string;
}

/** What sendTo did. */
export interface HistorySent {
  /** The device it went to. */
  deviceId: string;
  /** Entries in the bundle. */
  entries: number;
  /** Conversations they belong to. */
  conversations: number;
  /** The encrypted bundle's length in bytes (what the server sees of it). */
  ciphertextBytes: number;
  /** The oldest commit time covered, in milliseconds since the Unix epoch. */
  sinceMs: number;
  /** The transfer conversation and the media object of the bundle. */
  transferConversationId: string;
  objectId: string;
}

/** What the history part needs of the rest of the client. */
export interface HistoryDeps {
  listConversations(): Promise<Conversation[]>;
  getHistory(
    conversationId: string,
    options: { afterSeq?: bigint | number; limit?: number },
  ): Promise<{ entries: IncomingEntry[]; lastSeq: bigint; hasMore: boolean }>;
  createGroup(title: string, memberUserIds: readonly string[]): Promise<Conversation>;
  leaveGroup(conversationId: string): Promise<unknown>;
  sendContentUnary(conversationId: string, content: Uint8Array, clientMsgId: string): Promise<unknown>;
}

/**
 * History for a newly linked device: an existing device builds a bundle of its recent history,
 * encrypts it like an attachment, uploads it through the media service into a transfer
 * conversation (a group of the user alone) and sends the key there, end-to-end encrypted; the new
 * device downloads, verifies, decrypts and keeps it in its profile (`history/<conversation>`),
 * deduplicated against what it synced itself. docs/encryption.md says why this shape.
 */
export class History {
  /** Imports running, by media object (a redelivered transfer joins the running import). */
  private readonly importing = new Map<string, Promise<void>>();

  constructor(
    private readonly ctx: ClientContext,
    private readonly deps: HistoryDeps,
  ) {
    if (ctx.e2ee === undefined) return;
    // Once per process, when the stream is first up: transfers left pending by the last run.
    const connected = (): void => {
      ctx.events.off("connected", connected);
      this.resumePending().catch((err: unknown) => ctx.backgroundFailed(err));
    };
    ctx.events.on("connected", connected);
  }

  /**
   * Sends this device's recent history to another (active) device of this user. Needs encryption;
   * the other device must have put its keys in the directory (SwitchboardClient.link does).
   */
  async sendTo(deviceId: string, options: HistorySendOptions): Promise<HistorySent> {
    this.ctx.requireE2ee();
    const self = this.ctx.profile.credentials;
    const sinceMs = sinceOf(options);
    const maxEntries = bounded(
      "maxEntries",
      options.maxEntries,
      DEFAULT_HISTORY_MAX_ENTRIES,
      HISTORY_MAX_ENTRIES,
    );
    const maxBytes = bounded("maxBytes", options.maxBytes, DEFAULT_HISTORY_MAX_BYTES, HISTORY_MAX_BYTES);
    if (deviceId === self.deviceId)
      throw new ConnectError("history: a device cannot send its history to itself", Code.InvalidArgument);
    const devices = (await this.ctx.conn.accounts.listDevices({ includeRevoked: false })).devices;
    if (!devices.some((d) => d.deviceId === deviceId))
      throw new ConnectError(`history: ${deviceId} is not an active device of this user`, Code.NotFound);

    const what = `the entries since ${new Date(sinceMs).toISOString()}`;
    const builder = new BundleBuilder(maxEntries, maxBytes, what);
    const conversations = new Set<string>();
    for (const c of await this.deps.listConversations()) {
      if (isTransfer(c) || Number(c.lastActiveMs) < sinceMs || c.lastSeq === 0n) continue;
      let after = await this.firstSeqSince(c.conversationId, c.lastSeq, sinceMs);
      for (;;) {
        const page = await this.deps.getHistory(c.conversationId, { afterSeq: after, limit: PAGE });
        for (const entry of page.entries) {
          // Nothing to show (keys, retry requests, transfers), or nothing this device could read.
          if (entry.keysOnly || entry.decodeError !== undefined || Number(entry.serverTimeMs) < sinceMs)
            continue;
          builder.add(entry);
          conversations.add(c.conversationId);
        }
        const last = page.entries.at(-1);
        if (!page.hasMore || last === undefined) break;
        after = last.seq;
      }
    }
    const plaintext = toBinary(
      HistoryBundleSchema,
      create(HistoryBundleSchema, {
        userId: self.userId,
        fromDeviceId: self.deviceId,
        forDeviceId: deviceId,
        createdAtMs: BigInt(Date.now()),
        sinceMs: BigInt(sinceMs),
        entries: builder.entries,
      }),
    );
    const sealed = encryptAttachment(plaintext);
    // A fresh transfer conversation: only this user's devices can read it or fetch its objects.
    const transfer = await this.deps.createGroup(TRANSFER_TITLE, []);
    const conversationId = transfer.conversationId;
    let objectId: string;
    try {
      objectId = await this.deliver(conversationId, deviceId, sealed, builder.entries.length, sinceMs);
    } catch (err) {
      // Nothing usable went through: the transfer conversation goes (this user was its one member).
      await this.leave(conversationId);
      throw err;
    }
    return {
      deviceId,
      entries: builder.entries.length,
      conversations: conversations.size,
      ciphertextBytes: sealed.size,
      sinceMs,
      transferConversationId: conversationId,
      objectId,
    };
  }

  /**
   * Uploads the encrypted bundle into the transfer conversation and sends its pointer there for
   * the target device; returns the media object's id.
   */
  private async deliver(
    conversationId: string,
    deviceId: string,
    sealed: { ciphertext: Uint8Array; size: number; key: Uint8Array; digest: Uint8Array },
    entryCount: number,
    sinceMs: number,
  ): Promise<string> {
    const e2ee = this.ctx.requireE2ee();
    const self = this.ctx.profile.credentials;
    const upload = await this.ctx.conn.media.createUpload({
      conversationId,
      lengthBytes: BigInt(sealed.size),
    });
    await putObject(upload.uploadUrl, sealed.ciphertext, sealed.size);
    const pointer = create(AttachmentPointerSchema, {
      objectId: upload.objectId,
      key: sealed.key,
      digest: sealed.digest,
      sizeBytes: BigInt(sealed.size - ATTACHMENT_OVERHEAD),
      ciphertextBytes: BigInt(sealed.size),
      contentType: "application/x-switchboard-history",
    });
    const content = toBinary(
      SealedContentSchema,
      create(SealedContentSchema, {
        conversationId,
        kind: ContentKind.MESSAGE,
        historyTransfer: {
          forDeviceId: deviceId,
          bundle: pointer,
          entryCount,
          sinceMs: BigInt(sinceMs),
        },
      }),
    );
    // The target is one of this user's devices to encrypt for, even if this device never heard
    // of it: the gateway trusts its cached device lists for a few seconds, but never refuses a
    // device the sender names, so a just-linked device is not left out.
    await e2ee.applyMismatch(create(DeviceMismatchSchema, { missing: [{ userId: self.userId, deviceId }] }));
    await this.deps.sendContentUnary(conversationId, content, newClientMsgId());
    if (!(await e2ee.safetyNumbers(self.userId)).some((n) => n.deviceId === deviceId)) {
      throw new ConnectError(
        `history: ${deviceId} has no keys in the key directory, so it cannot read the transfer ` +
          "(a device puts them there when it links with encryption; send again once it has)",
        Code.FailedPrecondition,
      );
    }
    try {
      await this.ctx.conn.media.claimUpload({ objectId: upload.objectId, conversationId });
    } catch (err) {
      // The transfer is sent; the new device's first download claims the object too.
      this.ctx.events.reportError(err, Code.Unknown);
    }
    return upload.objectId;
  }

  /**
   * The seq after which a conversation's entries are at or after sinceMs: a binary search over
   * single-entry pages (undecoded), so a long log costs log2(n) small reads, not a full scan.
   */
  private async firstSeqSince(conversationId: string, lastSeq: bigint, sinceMs: number): Promise<bigint> {
    const at = async (seq: bigint): Promise<Entry | undefined> =>
      (await this.ctx.conn.conversations.getHistory({ conversationId, afterSeq: seq - 1n, limit: 1 }))
        .entries[0];
    // The smallest seq whose first visible entry at or after it is recent enough (lastSeq + 1:
    // none is). Commit times grow with seq; entries before this device's join are not served.
    let lo = 1n;
    let hi = lastSeq + 1n;
    while (lo < hi) {
      const mid = (lo + hi) / 2n;
      const entry = await at(mid);
      if (entry === undefined || Number(entry.serverTimeMs) >= sinceMs) hi = mid;
      else lo = entry.seq + 1n;
    }
    return lo - 1n;
  }

  /**
   * A transfer message reached this device (from the decoder): the bundle is imported in the
   * background unless it is for another device; "historyImported" or "historyRefused" tells.
   * The transfer is kept in the profile (`history-pending/<object id>`) until it is imported or
   * refused: the entry is acknowledged before the import ends, so a process that stops midway
   * takes it up again from there on its next connect.
   */
  offered(raw: Entry, transfer: HistoryTransfer): void {
    const self = this.ctx.profile.credentials;
    if (transfer.forDeviceId !== self.deviceId) return;
    if (raw.senderUserId !== self.userId || raw.senderDeviceId === self.deviceId) return;
    if (transfer.bundle === undefined) return;
    const pending: PendingTransfer = {
      conversationId: raw.conversationId,
      fromDeviceId: raw.senderDeviceId,
      transfer: Buffer.from(toBinary(HistoryTransferSchema, transfer)).toString("base64"),
    };
    this.start(transfer.bundle.objectId, pending, true);
  }

  /** Imports a transfer once per process; see offered. */
  private start(objectId: string, pending: PendingTransfer, persist: boolean): void {
    if (this.importing.has(objectId)) return;
    const key = `${PENDING}${objectId}`;
    const done = async (): Promise<void> => {
      await this.ctx.profile.storage.delete([key]);
      await this.leave(pending.conversationId);
    };
    const run = (async () => {
      if (persist)
        await this.ctx.profile.storage.put([[key, new TextEncoder().encode(JSON.stringify(pending))]]);
      await this.importBundle(pending);
    })()
      .then(done)
      .catch(async (err: unknown) => {
        const error =
          err instanceof HistoryError
            ? err
            : err instanceof AttachmentError
              ? new HistoryError(err.reason, `history: the bundle was refused: ${err.message}`)
              : undefined;
        if (error === undefined) {
          // A transient failure (the network, the media store): the transfer stays pending and
          // its conversation stays, so the next connect (or receivePending) tries again.
          this.ctx.backgroundFailed(err);
          this.importing.delete(objectId);
          return;
        }
        this.ctx.events.emit("historyRefused", { fromDeviceId: pending.fromDeviceId, error });
        // Refused for good: nothing more will come through it (the old device sends anew).
        await done().catch((e: unknown) => this.ctx.backgroundFailed(e));
      });
    this.importing.set(objectId, run);
  }

  /** Takes up the transfers a process that stopped midway left pending (on the first connect). */
  private async resumePending(): Promise<void> {
    for (const [key, value] of await this.ctx.profile.storage.list(PENDING)) {
      const pending = JSON.parse(new TextDecoder().decode(value)) as PendingTransfer;
      this.start(key.slice(PENDING.length), pending, false);
    }
  }

  /** Resolves when the imports started so far have finished (imported or refused). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.importing.values()]);
  }

  /**
   * Reads the transfer conversations this device has not read through a stream (a device that
   * only runs commands), and takes up transfers left pending: their bundles are imported;
   * resolves when those imports are done.
   */
  async receivePending(): Promise<void> {
    await this.resumePending();
    for (const c of await this.deps.listConversations()) {
      if (!isTransfer(c)) continue;
      await this.deps.getHistory(c.conversationId, { limit: PAGE });
    }
    await this.settled();
  }

  /**
   * The entries imported for a conversation, in seq order (empty when none were), without those
   * this device has since decrypted itself: its own copy, from the log, is the one to show.
   */
  async entries(conversationId: string): Promise<IncomingEntry[]> {
    const self = this.ctx.profile.credentials;
    const e2ee = this.ctx.e2ee;
    const kept = await this.kept(conversationId);
    return kept.entries
      .filter((e) => e2ee === undefined || !e2ee.hasDecoded(e.entry!))
      .map((e) => importedToIncoming(e, self.userId, self.deviceId));
  }

  private async importBundle(pending: PendingTransfer): Promise<void> {
    const self = this.ctx.profile.credentials;
    const transfer = fromBinary(HistoryTransferSchema, Buffer.from(pending.transfer, "base64"));
    const pointer = transfer.bundle!;
    if (pointer.ciphertextBytes > BigInt(HISTORY_MAX_BYTES + ATTACHMENT_OVERHEAD)) {
      throw new HistoryError(
        "too-large",
        `history: the bundle is ${pointer.ciphertextBytes} bytes; this device takes at most ${HISTORY_MAX_BYTES + ATTACHMENT_OVERHEAD}`,
      );
    }
    const download = await this.ctx.conn.media.createDownload({
      objectId: pointer.objectId,
      conversationId: pending.conversationId,
    });
    if (download.lengthBytes !== pointer.ciphertextBytes) {
      throw new HistoryError(
        "digest",
        `history: the stored bundle is ${download.lengthBytes} bytes, the sender's was ${pointer.ciphertextBytes}`,
      );
    }
    let ciphertext: Uint8Array;
    try {
      ciphertext = (await getObject(
        download.downloadUrl,
        undefined,
        Number(pointer.ciphertextBytes),
      )) as Uint8Array;
    } catch (err) {
      if (!(err instanceof ConnectError) || err.code !== Code.ResourceExhausted) throw err;
      throw new HistoryError("too-large", `history: ${err.rawMessage} (the bundle's announced length)`);
    }
    // Throws AttachmentError "digest" or "authentication" for bytes that are not the sender's.
    const plaintext = decryptAttachment(ciphertext, pointer.key, pointer.digest);
    const bundle = parseBundle(plaintext, {
      userId: self.userId,
      fromDeviceId: pending.fromDeviceId,
      forDeviceId: self.deviceId,
      entryCount: transfer.entryCount,
      maxEntries: HISTORY_MAX_ENTRIES,
    });
    const event = await this.keep(bundle);
    this.ctx.events.emit("historyImported", { ...event, fromDeviceId: pending.fromDeviceId });
  }

  /**
   * Keeps a bundle's entries by conversation, merged with what was imported before, leaving out
   * entries this device decrypted itself (it synced them; its own copy wins).
   */
  private async keep(bundle: HistoryBundle): Promise<Omit<HistoryImportedEvent, "fromDeviceId">> {
    const e2ee = this.ctx.requireE2ee();
    const byConversation = new Map<string, HistoryEntry[]>();
    let duplicates = 0;
    for (const item of bundle.entries) {
      const entry = item.entry!;
      if (e2ee.hasDecoded(entry)) {
        duplicates++;
        continue;
      }
      const list = byConversation.get(entry.conversationId) ?? [];
      list.push(item);
      byConversation.set(entry.conversationId, list);
    }
    let imported = 0;
    const writes: Array<[string, Uint8Array]> = [];
    for (const [conversationId, items] of byConversation) {
      const kept = await this.kept(conversationId);
      const bySeq = new Map(kept.entries.map((e) => [e.entry!.seq, e] as const));
      for (const item of items) {
        if (bySeq.has(item.entry!.seq)) duplicates++;
        else imported++;
        bySeq.set(item.entry!.seq, item);
      }
      kept.entries = [...bySeq.values()].sort((a, b) => (a.entry!.seq < b.entry!.seq ? -1 : 1));
      writes.push([keyOf(conversationId), toBinary(HistoryBundleSchema, kept)]);
    }
    if (writes.length > 0) await this.ctx.profile.storage.put(writes);
    return { imported, duplicates, conversationIds: [...byConversation.keys()], sinceMs: bundle.sinceMs };
  }

  private async kept(conversationId: string): Promise<HistoryBundle> {
    const stored = await this.ctx.profile.storage.get(keyOf(conversationId));
    return stored === undefined ? create(HistoryBundleSchema) : fromBinary(HistoryBundleSchema, stored);
  }

  /** Leaves a transfer conversation once its transfer is handled: nothing more comes through it. */
  private async leave(conversationId: string): Promise<void> {
    try {
      await this.deps.leaveGroup(conversationId);
    } catch (err) {
      this.ctx.backgroundFailed(err);
    }
  }
}

/** Where a conversation's imported entries are kept in the profile. */
function keyOf(conversationId: string): string {
  return `history/${conversationId}`;
}

function isTransfer(c: Conversation): boolean {
  return c.kind === ConversationKind.GROUP && c.title === TRANSFER_TITLE && c.memberCount <= 1;
}
