import type { ProfileStorage } from "../storage/port.js";
import { JsonDoc, RecordSet } from "../storage/records.js";
import {
  type ConversationJson,
  type ConversationState,
  fromJson,
  type StartRecord,
  toJson,
} from "./model.js";

// Where conversation health keeps its state in the profile's storage: one record per conversation
// (`health/conversations/`) and the conversation starts (`health/starts.json`), held in memory,
// bounded in count and bytes, and written in batches.

const CONVERSATIONS = "health/conversations/";
const STARTS = "health/starts.json";

/** The bounds and the write batching of a HealthStore. */
export interface StoreLimits {
  /** Conversations kept (least recently active dropped first). Default 1,000. */
  maxConversations?: number;
  /** Bytes of conversation state kept, as stored. Default 4 MiB. */
  maxStateBytes?: number;
  /** Conversation starts kept for metrics. Default 1,000. */
  maxStarts?: number;
  /** Changes are written together this long after the first one. Default 200. */
  writeDelayMs?: number;
}

interface StartsFile {
  v: 1;
  starts: Array<{ c: string; s: string; t: number; r?: number }>;
}

/**
 * Health's state: conversations and starts in memory, written through in batches (one storage
 * write per batch, not per entry: with the file engine a write is an fsync). Without records
 * (read-only) changes stay in memory.
 */
export class HealthStore {
  private readonly sizes = new Map<string, number>();
  /** Conversations changed since the last write, and ones dropped by the bounds. */
  private readonly dirty = new Set<string>();
  private readonly dropped = new Set<string>();
  private startsDirty = false;
  private writeTimer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly limits: StoreLimits,
    /** Undefined when read-only. */
    private readonly records: RecordSet | undefined,
    private readonly startsDoc: JsonDoc<StartsFile>,
    /** Every conversation kept, by id. */
    readonly conversations: Map<string, ConversationState>,
  ) {
    for (const [id, state] of conversations) this.sizes.set(id, JSON.stringify(toJson(state)).length);
  }

  static async open(storage: ProfileStorage, readOnly: boolean, limits: StoreLimits): Promise<HealthStore> {
    const records = await RecordSet.open(storage, CONVERSATIONS);
    const conversations = new Map<string, ConversationState>();
    for (const id of records.keys()) {
      const raw = records.get(id);
      if (raw === undefined) continue;
      try {
        const json = JSON.parse(new TextDecoder().decode(raw)) as ConversationJson;
        if (json.v === 1 && json.id === id) conversations.set(id, fromJson(json));
      } catch {
        // A damaged record is health lost for one conversation, not a reason to fail the client.
      }
    }
    const startsDoc = await JsonDoc.open<StartsFile>(storage, STARTS, () => ({ v: 1, starts: [] }));
    return new HealthStore(limits, readOnly ? undefined : records, startsDoc, conversations);
  }

  /** True when changes reach the storage. */
  get writable(): boolean {
    return this.records !== undefined;
  }

  /** A conversation changed: it is written with the next batch; the bounds are applied now. */
  touch(state: ConversationState): void {
    this.sizes.set(state.id, JSON.stringify(toJson(state)).length);
    this.dirty.add(state.id);
    this.dropped.delete(state.id);
    for (const id of this.evict(state.id)) {
      this.dirty.delete(id);
      this.dropped.add(id);
    }
    this.schedule();
  }

  /** The conversation starts kept (oldest first). */
  starts(): StartRecord[] {
    return this.startsDoc.value.starts.map((s) => ({
      conversationId: s.c,
      seq: BigInt(s.s),
      atMs: s.t,
      ...(s.r !== undefined && { ttfrMs: s.r }),
    }));
  }

  addStart(start: StartRecord): void {
    const doc = this.startsDoc.value;
    doc.starts.push({ c: start.conversationId, s: start.seq.toString(), t: start.atMs });
    const max = this.limits.maxStarts ?? 1_000;
    if (doc.starts.length > max) doc.starts.splice(0, doc.starts.length - max);
    this.startsDirty = true;
    this.schedule();
  }

  recordReply(start: StartRecord, ttfrMs: number): void {
    const seq = start.seq.toString();
    const record = this.startsDoc.value.starts.find((s) => s.c === start.conversationId && s.s === seq);
    if (record === undefined) return;
    record.r = ttfrMs;
    this.startsDirty = true;
    this.schedule();
  }

  /** Writes what changed now; resolves once it is durable (a failed write is tried again later). */
  flush(): Promise<void> {
    if (this.writeTimer !== undefined) clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    const next = this.writing.catch(() => {}).then(() => this.write());
    this.writing = next;
    return next;
  }

  private schedule(): void {
    if (this.records === undefined || this.writeTimer !== undefined) return;
    this.writeTimer = setTimeout(() => {
      this.writeTimer = undefined;
      // A failure is reported by the next flush(); the changes stay marked until written.
      this.flush().catch(() => {});
    }, this.limits.writeDelayMs ?? 200);
    // Health never keeps a process alive; what a process ending loses, attach's repair takes back.
    this.writeTimer.unref?.();
  }

  private async write(): Promise<void> {
    const records = this.records;
    if (records === undefined) return;
    const encoder = new TextEncoder();
    const puts: Array<[string, Uint8Array]> = [];
    for (const id of this.dirty) {
      const state = this.conversations.get(id);
      if (state !== undefined) puts.push([id, encoder.encode(JSON.stringify(toJson(state)))]);
    }
    const drops = [...this.dropped];
    const starts = this.startsDirty;
    this.dirty.clear();
    this.dropped.clear();
    this.startsDirty = false;
    try {
      await Promise.all([
        puts.length > 0 ? records.put(puts) : undefined,
        drops.length > 0 ? records.delete(drops) : undefined,
        starts ? this.startsDoc.save() : undefined,
      ]);
    } catch (err) {
      for (const [id] of puts) if (!this.dropped.has(id)) this.dirty.add(id);
      for (const id of drops) if (!this.dirty.has(id)) this.dropped.add(id);
      if (starts) this.startsDirty = true;
      this.schedule();
      throw err;
    }
  }

  /** Drops the least recently active conversations (never `keep`) beyond the bounds. */
  private evict(keep: string): string[] {
    const maxCount = this.limits.maxConversations ?? 1_000;
    const maxBytes = this.limits.maxStateBytes ?? 4 * 1024 * 1024;
    let bytes = 0;
    for (const size of this.sizes.values()) bytes += size;
    const evicted: string[] = [];
    while (this.conversations.size > maxCount || (bytes > maxBytes && this.conversations.size > 1)) {
      let oldest: ConversationState | undefined;
      for (const s of this.conversations.values()) {
        if (s.id === keep) continue;
        if (oldest === undefined || activity(s) < activity(oldest)) oldest = s;
      }
      if (oldest === undefined) break;
      this.conversations.delete(oldest.id);
      bytes -= this.sizes.get(oldest.id) ?? 0;
      this.sizes.delete(oldest.id);
      evicted.push(oldest.id);
    }
    return evicted;
  }
}

function activity(s: ConversationState): number {
  return Math.max(s.lastMessageMs, s.openedMs);
}
