import { mkdir, open, readFile, unlink } from "node:fs/promises";
import { join } from "node:path";
import { isErrno, removeLeftovers, SerialFile, writeFileAtomic } from "./durable-file.js";
import type { DeviceCredentials, LocalCursor, OutboxItem } from "./types.js";

const CREDENTIALS = "credentials.json";
const STATE = "state.json";
const OUTBOX = "outbox.json";
const LOCK = "profile.lock";

interface StateFile {
  version: 1;
  /** Per conversation: seqs as decimal strings (JSON has no bigint). */
  cursors: Record<string, { delivered: string; read: string }>;
}

interface OutboxFile {
  version: 1;
  items: OutboxItem[];
}

/**
 * A device's local state in one directory: credentials, per-conversation cursors and the outbox of
 * unanswered sends. Every file is replaced atomically. Cursors are written when flushCursors() is
 * called (the client does so before acknowledging entries to the server, so the server's cursor
 * never runs ahead of the device's); outbox additions are durable before addToOutbox resolves.
 */
export class Profile {
  private readonly cursorMap = new Map<string, LocalCursor>();
  private readonly outboxItems = new Map<string, OutboxItem>();
  private readonly stateFile: SerialFile;
  private readonly outboxFile: SerialFile;
  private cursorsDirty = false;
  private locked = false;

  private constructor(
    /** The profile directory. */
    readonly dir: string,
    /** The device's credentials. */
    readonly credentials: DeviceCredentials,
  ) {
    this.stateFile = new SerialFile(join(dir, STATE), () => this.serializeState());
    this.outboxFile = new SerialFile(join(dir, OUTBOX), () => this.serializeOutbox());
  }

  /** True if the directory holds a profile. */
  static async exists(dir: string): Promise<boolean> {
    try {
      await readFile(join(dir, CREDENTIALS));
      return true;
    } catch (err) {
      if (isErrno(err, "ENOENT")) return false;
      throw err;
    }
  }

  /** Creates a profile for new credentials; refuses to overwrite an existing one. */
  static async create(dir: string, credentials: DeviceCredentials): Promise<Profile> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    if (await Profile.exists(dir)) {
      throw new Error(`a profile already exists in ${dir}; use another --profile directory`);
    }
    const profile = new Profile(dir, { ...credentials });
    await writeFileAtomic(join(dir, CREDENTIALS), `${JSON.stringify(credentials, null, 2)}\n`);
    await profile.stateFile.write();
    await profile.outboxFile.write();
    return profile;
  }

  /** Opens an existing profile. */
  static async open(dir: string): Promise<Profile> {
    let raw: string;
    try {
      raw = await readFile(join(dir, CREDENTIALS), "utf8");
    } catch (err) {
      if (isErrno(err, "ENOENT")) {
        throw new Error(`no profile in ${dir}; run "register" or "link" first`);
      }
      throw err;
    }
    const credentials = parseCredentials(raw, dir);
    const profile = new Profile(dir, credentials);
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
   * Takes the profile's lock, so that two processes never stream as the same device and overwrite
   * each other's cursors. A lock left by a process that died is taken over.
   */
  async lock(): Promise<void> {
    if (this.locked) return;
    const path = join(this.dir, LOCK);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const handle = await open(path, "wx", 0o600);
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        this.locked = true;
        return;
      } catch (err) {
        if (!isErrno(err, "EEXIST")) throw err;
      }
      const holder = Number.parseInt(await readFile(path, "utf8").catch(() => ""), 10);
      if (Number.isInteger(holder) && processAlive(holder)) {
        throw new Error(`profile ${this.dir} is in use by process ${holder}`);
      }
      await unlink(path).catch(() => {});
    }
    throw new Error(`could not lock profile ${this.dir}`);
  }

  /** Releases the lock taken by lock(). */
  async unlock(): Promise<void> {
    if (!this.locked) return;
    this.locked = false;
    await unlink(join(this.dir, LOCK)).catch(() => {});
  }

  private async load(): Promise<void> {
    // Leftovers of writes interrupted by a crash; the target files are intact.
    await removeLeftovers(this.dir);
    const state = await readJson<StateFile>(join(this.dir, STATE));
    for (const [id, c] of Object.entries(state?.cursors ?? {})) {
      this.cursorMap.set(id, { delivered: BigInt(c.delivered), read: BigInt(c.read) });
    }
    const outbox = await readJson<OutboxFile>(join(this.dir, OUTBOX));
    for (const item of outbox?.items ?? []) this.outboxItems.set(item.clientMsgId, item);
  }

  private serializeState(): string {
    const cursors: StateFile["cursors"] = {};
    for (const [id, c] of this.cursorMap) {
      cursors[id] = { delivered: c.delivered.toString(), read: c.read.toString() };
    }
    const file: StateFile = { version: 1, cursors };
    return `${JSON.stringify(file)}\n`;
  }

  private serializeOutbox(): string {
    const file: OutboxFile = { version: 1, items: this.outbox() };
    return `${JSON.stringify(file)}\n`;
  }
}

async function readJson<T>(path: string): Promise<T | undefined> {
  let raw: string;
  try {
    raw = await readFile(path, "utf8");
  } catch (err) {
    if (isErrno(err, "ENOENT")) return undefined;
    throw err;
  }
  try {
    return JSON.parse(raw) as T;
  } catch {
    throw new Error(`profile file ${path} is not valid JSON`);
  }
}

function parseCredentials(raw: string, dir: string): DeviceCredentials {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new Error(`profile ${dir}: ${CREDENTIALS} is not valid JSON`);
  }
  const fields = ["serverUrl", "userId", "username", "deviceId", "deviceSecret"] as const;
  if (typeof value !== "object" || value === null) throw new Error(`profile ${dir}: bad ${CREDENTIALS}`);
  const record = value as Record<string, unknown>;
  for (const field of fields) {
    if (typeof record[field] !== "string") throw new Error(`profile ${dir}: ${CREDENTIALS} lacks ${field}`);
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

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isErrno(err, "EPERM");
  }
}
