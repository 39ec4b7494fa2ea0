/**
 * The embedded store engine: both storage ports in one LMDB environment (one directory, one
 * memory-mapped file), for `npm start` and single-node deployments.
 *
 * Key layout. Keys use lmdb's default ordered-binary encoding, in which array keys sort element by
 * element and numbers sort numerically, so [conversationId, seq] ranges come out in seq order.
 * Values are msgpack unless noted.
 *
 *   sub-database        key                                         value
 *   meta                "layout"                                    layout version (LAYOUT_VERSION)
 *   conversations       conversationId                              ConversationRecord
 *   entries             [conversationId, seq]                       Entry, protobuf binary
 *   heads               conversationId                              last seq (the log is 1..head)
 *   idempotency         [conversationId, deviceId, clientMsgId]     { seq, atMs }
 *   idempotencyByTime   [atMs, conversationId, deviceId, clientMsgId]   true (expiry index)
 *   members             [conversationId, userId]                    MemberRecord
 *   userConversations   [userId, conversationId]                    joinedSeq
 *   deviceCursors       [conversationId, deviceId]                  { deliveredUpTo, readUpTo }
 *   deviceFloors        [deviceId, conversationId]                  floorSeq (a linked device's start)
 *   users               userId                                      UserRecord
 *   usernames           username                                    userId
 *   devices             deviceId                                    DeviceRecord
 *   userDevices         [userId, createdAtMs, deviceId]             true (listing index)
 *   linkCodes           codeHash                                    LinkCodeRecord
 *   userPrivacy         userId                                      PrivacyRecord (set fields only)
 *   userAvatars         userId                                      AvatarRecord (object id, length)
 *   invites             inviteId                                    InviteRecord (registration invites)
 *   userBlocks, reports, reportsByUser: see safety.ts
 *   deviceKeys          deviceId                                    DeviceKeysRecord
 *   oneTimePrekeys      [deviceId, "ec" | "kyber", keyId]           { publicKey, signature? }
 *   prekeyCounts        deviceId                                    { ec, kyber } (one-time keys left)
 *
 * Writes. Every port method that writes runs its checks and puts in one callback passed to
 * `childTransaction`. lmdb-js runs all callbacks queued before a write transaction starts (and
 * those queued while it runs) in that one transaction, with one commit and one fsync: that is the
 * group commit. Each callback gets its own nested LMDB transaction, aborted if the callback throws,
 * so a refused call (a seq conflict, a taken username) is rolled back alone while the others in the
 * batch commit. A plain `transaction` callback would not do: lmdb-js keeps whatever a throwing
 * callback wrote before it threw (write.js, executeTxnCallbacks).
 *
 * The write thread. lmdb-js runs those callbacks on the thread that queued them, and they are where
 * a write's work is. The conversation port's writes (the hot path: commits, cursors) are therefore
 * units of plain data (conversation-writes.ts) that a worker thread applies, as child transactions
 * of one synchronous transaction per batch (write-thread.ts, write-worker.ts); the main thread keeps
 * the encoding of entries and the reads. The account and key ports, rarely written, write on the
 * main thread.
 *
 * Durability. The environment is opened with lmdb-js's defaults for syncing: no noSync, noMetaSync,
 * mapAsync or separateFlushed. Its default overlappingSync moves the fsync out of the writer lock,
 * but mdb_txn_commit still returns only after the fsync and the meta-page write, and lmdb-js
 * resolves a write's promise only after that, so a resolved promise means the data is on disk.
 * The write thread's synchronous transactions are opened without MDB_NOSYNC, so their commit syncs
 * the data before it writes the meta page, and returns after both. durability.test.ts holds the
 * conversation port's commits to that in the system calls: under strace, each commit's fdatasync
 * and O_DSYNC meta write come before it resolves.
 * Write promises resolve in commit order, and reads see a commit once its promise has resolved.
 *
 * Storage faults (write-faults.ts). A commit the disk refuses (full, EIO, a failed fsync) rejects
 * its writes with UnavailableError and stores none of them; reads and later writes go on, and
 * writes succeed again once they fit. Two lmdb-js habits would otherwise end the process on such
 * a failure with an unhandled rejection: each write's error carries its cause as a second rejected
 * promise (`commitError`), observed by WriteFaults; and with event-turn batching (its default)
 * lmdb-js starts each batch with an internal write promise that nobody awaits, so the engine
 * turns that batching off. Group commit does not depend on it: the `childTransaction` callbacks
 * queued before a transaction starts still share it.
 */
import { mkdir } from "node:fs/promises";
import type { Database, Key, RootDatabase } from "lmdb";
import type { StoreEngine } from "../types.js";
import { type AccountDbs, LmdbAccountStore } from "./accounts.js";
import { conversationDbs } from "./conversation-writes.js";
import { LmdbConversationStore } from "./conversations.js";
import { openEnvironment, type WriteUnit } from "./environment.js";
import { type KeyDbs, LmdbKeyStore } from "./keys.js";
import { WriteFaults } from "./write-faults.js";
import { WriteThread } from "./write-thread.js";

/** Bumped when the key layout changes incompatibly; an engine refuses files of another layout. */
const LAYOUT_VERSION = 1;

/** Options of the embedded engine. */
export interface LmdbStoreOptions {
  /** The directory holding the environment; created if missing. */
  path: string;
  /**
   * Initial size of the memory map, in bytes. lmdb-js grows the map as the data grows, so this only
   * matters to pre-size it; by default it starts small.
   */
  mapSizeBytes?: number;
}

/** The embedded engine: both ports over one LMDB environment. */
export class LmdbStoreEngine implements StoreEngine {
  readonly conversations: LmdbConversationStore;
  readonly accounts: LmdbAccountStore;
  readonly keys: LmdbKeyStore;
  private closing: Promise<void> | undefined;
  private readonly faults = new WriteFaults();

  constructor(
    private readonly root: RootDatabase,
    private readonly writeThread: WriteThread,
  ) {
    const writeUnit: WriteUnit = (fn) => this.faults.run(() => root.childTransaction(fn));
    const db = <V>(name: string): Database<V, Key> => root.openDB<V, Key>({ name, encoding: "msgpack" });
    this.conversations = new LmdbConversationStore(conversationDbs(root), (unit) =>
      this.faults.run(() => writeThread.run(unit)),
    );
    const accounts: AccountDbs = {
      users: db("users"),
      usernames: db("usernames"),
      devices: db("devices"),
      userDevices: db("userDevices"),
      linkCodes: db("linkCodes"),
      userPrivacy: db("userPrivacy"),
      userAvatars: db("userAvatars"),
      invites: db("invites"),
      safety: { userBlocks: db("userBlocks"), reports: db("reports"), reportsByUser: db("reportsByUser") },
    };
    this.accounts = new LmdbAccountStore(accounts, writeUnit);
    const keys: KeyDbs = {
      deviceKeys: db("deviceKeys"),
      oneTimePrekeys: db("oneTimePrekeys"),
      prekeyCounts: db("prekeyCounts"),
    };
    this.keys = new LmdbKeyStore(keys, writeUnit);
  }

  /**
   * The id of the last committed LMDB transaction. Group commit shows as many port writes per
   * increment; for tests and metrics.
   */
  lastTransactionId(): number {
    return (this.root.getStats() as { lastTxnId: number }).lastTxnId;
  }

  /** Why writes are failing right now (for readiness), or undefined when they are not. */
  writeProblem(): string | undefined {
    return this.faults.problem();
  }

  /** Waits for every pending write to be committed and flushed, then closes the environment. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.writeThread.close();
      // lmdb-js's flush promise for a transaction that failed never settles, and both `flushed`
      // and close() wait for the latest one: an empty transaction (it needs no space, so it
      // commits on a full disk too) replaces it with one that does.
      await this.root.childTransaction(() => {}).catch(() => {});
      await this.root.flushed;
      await this.root.close();
    })();
    return this.closing;
  }
}

/** Opens (creating if needed) the embedded store in a directory. */
export async function openLmdbStore(options: LmdbStoreOptions): Promise<LmdbStoreEngine> {
  await mkdir(options.path, { recursive: true });
  const root = openEnvironment(options.path, options.mapSizeBytes);
  try {
    const meta = root.openDB<number, Key>({ name: "meta" });
    const layout = meta.get("layout");
    if (layout === undefined) {
      await root.childTransaction(() => meta.put("layout", LAYOUT_VERSION));
    } else if (layout !== LAYOUT_VERSION) {
      throw new Error(
        `${options.path} holds store layout ${layout}; this build reads layout ${LAYOUT_VERSION}`,
      );
    }
    return new LmdbStoreEngine(
      root,
      // A commit on the worker must be visible to the next read here (write-thread.ts).
      new WriteThread(options.path, options.mapSizeBytes, () => root.resetReadTxn()),
    );
  } catch (err) {
    await root.close();
    throw err;
  }
}
