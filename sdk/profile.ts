import { storageAt } from "./storage/file.js";
import type { ProfileStorage, StorageLock } from "./storage/port.js";
import { readJson, SerialWrite } from "./storage/records.js";
import type { DeviceCredentials, LocalCursor, OutboxItem } from "./types.js";

// Keys in the profile's storage (with the file engine, the files of the profile directory).
const CREDENTIALS = "credentials.json";
const STATE = "state.json";
const OUTBOX = "outbox.json";

interface StateFile {
  version: 1;
  /** Per conversation: seqs as decimal strings (JSON has no bigint). */
  cursors: Record<string, { delivered: string; read: string }>;
  /** The stream port the deployment last named (ReadyFrame.stream_url), when the client took it. */
  streamUrl?: string;
}

interface OutboxFile {
  version: 1;
  items: OutboxItem[];
}

/**
 * A device's local state: credentials, per-conversation cursors and the outbox of unanswered
 * sends, kept in a ProfileStorage (a directory with the default file engine). Every value is
 * replaced atomically. Cursors are written when flushCursors() is called (the client does so
 * before acknowledging entries to the server, so the server's cursor never runs ahead of the
 * device's); outbox additions are durable before addToOutbox resolves.
 */
export class Profile {
  private readonly cursorMap = new Map<string, LocalCursor>();
  private readonly outboxItems = new Map<string, OutboxItem>();
  private readonly stateFile: SerialWrite;
  private readonly outboxFile: SerialWrite;
  private cursorsDirty = false;
  private learnedStream: string | undefined;
  private held: Promise<StorageLock> | undefined;

  private constructor(
    /** Where the profile lives. */
    readonly storage: ProfileStorage,
    /** The device's credentials. */
    readonly credentials: DeviceCredentials,
  ) {
    this.stateFile = new SerialWrite(storage, STATE, () => this.serializeState());
    this.outboxFile = new SerialWrite(storage, OUTBOX, () => this.serializeOutbox());
  }

  /** Where the profile lives, for messages (the directory with the file engine). */
  get location(): string {
    return this.storage.location;
  }

  /** True if the storage (or directory) holds a profile. */
  static async exists(place: string | ProfileStorage): Promise<boolean> {
    return (await storageAt(place).get(CREDENTIALS)) !== undefined;
  }

  /** Creates a profile for new credentials; refuses to overwrite an existing one. */
  static async create(place: string | ProfileStorage, credentials: DeviceCredentials): Promise<Profile> {
    const storage = storageAt(place);
    if (await Profile.exists(storage)) {
      throw new Error(`a profile already exists in ${storage.location}; use another --profile directory`);
    }
    const profile = new Profile(storage, { ...credentials });
    await storage.put([[CREDENTIALS, new TextEncoder().encode(`${JSON.stringify(credentials, null, 2)}\n`)]]);
    await profile.stateFile.write();
    await profile.outboxFile.write();
    return profile;
  }

  /** Opens an existing profile. */
  static async open(place: string | ProfileStorage): Promise<Profile> {
    const storage = storageAt(place);
    const raw = await storage.get(CREDENTIALS);
    if (raw === undefined) {
      throw new Error(`no profile in ${storage.location}; run "register" or "link" first`);
    }
    const credentials = parseCredentials(new TextDecoder().decode(raw), storage.location);
    const profile = new Profile(storage, credentials);
    await profile.load();
    return profile;
  }

  /** The cursors of every conversation this device has seen. */
  cursors(): Array<[string, LocalCursor]> {
    return [...this.cursorMap].map(([id, c]) => [id, { ...c }]);
  }

  /** One conversation's cursors. */
  cursor(conversationId: string): LocalCursor | undefined {
    const c = this.cursorMap.get(conversationId);
    return c === undefined ? undefined : { ...c };
  }

  /** Moves the delivered cursor forward (never back); durable after the next flushCursors(). */
  setDelivered(conversationId: string, seq: bigint): void {
    const c = this.cursorMap.get(conversationId);
    if (c === undefined) this.cursorMap.set(conversationId, { delivered: seq, read: 0n });
    else if (seq > c.delivered) c.delivered = seq;
    else return;
    this.cursorsDirty = true;
  }

  /** Moves the read cursor forward (never back); durable after the next flushCursors(). */
  setRead(conversationId: string, seq: bigint): void {
    const c = this.cursorMap.get(conversationId);
    if (c === undefined) this.cursorMap.set(conversationId, { delivered: 0n, read: seq });
    else if (seq > c.read) c.read = seq;
    else return;
    this.cursorsDirty = true;
  }

  /** Writes the cursors if they changed. */
  async flushCursors(): Promise<void> {
    // Another caller's write may still carry our changes: wait for it rather than report them
    // durable too early.
    if (!this.cursorsDirty) await this.stateFile.settled();
    if (!this.cursorsDirty) return;
    this.cursorsDirty = false;
    try {
      await this.stateFile.write();
    } catch (err) {
      this.cursorsDirty = true;
      throw err;
    }
  }

  /** The stream port an earlier connection learned (rememberStreamUrl), if any. */
  get streamUrl(): string | undefined {
    return this.learnedStream;
  }

  /**
   * Keeps the stream port the connection now uses (undefined: none), so that the first stream
   * after a restart opens there too. Written only when it changes, which a deployment does rarely.
   * The write carries the cursors as they stand, as a flush would: each was set once the app had
   * taken its entry.
   */
  async rememberStreamUrl(url: string | undefined): Promise<void> {
    if (url === this.learnedStream) return;
    this.learnedStream = url;
    await this.stateFile.write();
  }

  /** Unanswered sends, oldest first. */
  outbox(): OutboxItem[] {
    return [...this.outboxItems.values()].sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  /** Records a send; resolves once it is durable. */
  async addToOutbox(item: OutboxItem): Promise<void> {
    this.outboxItems.set(item.clientMsgId, { ...item });
    await this.outboxFile.write();
  }

  /**
   * Forgets an answered send. Losing this write in a crash only means one idempotent resend, so
   * callers need not wait for it.
   */
  async removeFromOutbox(clientMsgId: string): Promise<void> {
    if (!this.outboxItems.delete(clientMsgId)) return;
    await this.outboxFile.write();
  }

  /** Resolves when every write started so far has finished. */
  async settled(): Promise<void> {
    await Promise.all([this.stateFile.settled(), this.outboxFile.settled()]);
  }

  /**
   * Takes the profile's lock (ProfileStorage.lock), so that two clients never stream as the same
   * device and overwrite each other's cursors. The file engine takes over a lock left by a process
   * that died.
   */
  async lock(): Promise<void> {
    this.held ??= this.storage.lock();
    const taking = this.held;
    try {
      await taking;
    } catch (err) {
      if (this.held === taking) this.held = undefined;
      throw err;
    }
  }

  /**
   * Releases the lock taken by lock(), also one still being taken: a client closed while its
   * connect() waits for the lock must not leave the lock behind for its process's lifetime.
   */
  async unlock(): Promise<void> {
    const held = this.held;
    this.held = undefined;
    const lock = await held?.catch(() => undefined);
    await lock?.release();
  }

  private async load(): Promise<void> {
    const state = await readJson<StateFile>(this.storage, STATE);
    if (typeof state?.streamUrl === "string") this.learnedStream = state.streamUrl;
    for (const [id, c] of Object.entries(state?.cursors ?? {})) {
      this.cursorMap.set(id, { delivered: BigInt(c.delivered), read: BigInt(c.read) });
    }
    const outbox = await readJson<OutboxFile>(this.storage, OUTBOX);
    for (const item of outbox?.items ?? []) this.outboxItems.set(item.clientMsgId, item);
  }

  private serializeState(): string {
    const cursors: StateFile["cursors"] = {};
    for (const [id, c] of this.cursorMap) {
      cursors[id] = { delivered: c.delivered.toString(), read: c.read.toString() };
    }
    const file: StateFile = {
      version: 1,
      cursors,
      ...(this.learnedStream !== undefined && { streamUrl: this.learnedStream }),
    };
    return `${JSON.stringify(file)}\n`;
  }

  private serializeOutbox(): string {
    const file: OutboxFile = { version: 1, items: this.outbox() };
    return `${JSON.stringify(file)}\n`;
  }
}

function parseCredentials(raw: string, where: string): DeviceCredentials {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new Error(`profile ${where}: ${CREDENTIALS} is not valid JSON`);
  }
  const fields = ["serverUrl", "userId", "username", "deviceId", "deviceSecret"] as const;
  if (typeof value !== "object" || value === null) throw new Error(`profile ${where}: bad ${CREDENTIALS}`);
  const record = value as Record<string, unknown>;
  for (const field of fields) {
    if (typeof record[field] !== "string") throw new Error(`profile ${where}: ${CREDENTIALS} lacks ${field}`);
  }
  return {
    serverUrl: record.serverUrl as string,
    userId: record.userId as string,
    username: record.username as string,
    deviceId: record.deviceId as string,
    deviceSecret: record.deviceSecret as string,
    ...(typeof record.encrypted === "boolean" && { encrypted: record.encrypted }),
  };
}
