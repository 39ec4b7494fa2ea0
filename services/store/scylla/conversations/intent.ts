/**
 * A commit's plan and intent. The plan merges one commit's writes per conversation; the intent is
 * what an appending commit stores in the head row when it reserves its seqs, enough for any
 * process to finish the commit alone (see docs/scylla.md). The intent's JSON form is stored data:
 * its fields must stay readable by every version of a mesh.
 */
import { randomUUID } from "node:crypto";
import { entryBytes } from "../../../common/entry-bytes.js";
import { StoreError } from "../../errors.js";
import { conflict, conversationRecord, memberRecord, seqOf } from "../../records.js";
import type { ConversationRecord, ConversationWrite, IdempotencyKey, MemberRecord } from "../../types.js";
import type { EncodedEntry } from "./layout.js";

/** The final state of one member after a commit. */
export type MemberOp = { put: MemberRecord } | { remove: string };

/**
 * Everything one commit does to one conversation that appends, stored in the conversation's head
 * row when the seqs are reserved. Any process can finish the commit from it alone, which is what
 * makes a crash between the reservation and the head's advance harmless (see docs/scylla.md).
 */
export interface Intent {
  /** Names this reservation; the head row's pending_id. */
  id: string;
  /** The conversation appended to. */
  conversationId: string;
  /** The write timestamp of every cell the commit writes, in microseconds. */
  tsMicros: number;
  /** When the commit was made, in milliseconds (idempotency records' time). */
  atMs: number;
  /** The first seq reserved. */
  firstSeq: number;
  /** The last seq reserved; the head's last_seq once the commit is finished. */
  lastSeq: number;
  /** The bytes of every seq firstSeq..lastSeq, rewrites within the commit already applied. */
  entries: EncodedEntry[];
  /** Rewrites of seqs before firstSeq. */
  replaced: EncodedEntry[];
  /** The conversation's new metadata, when the commit writes it. */
  conversation?: ConversationRecord;
  /** Idempotency records of the appended entries. */
  idempotency: IdempotencyKey[];
  /** Members put or removed. */
  members: MemberOp[];
}

interface IntentJson extends Omit<Intent, "entries" | "replaced"> {
  entries: { seq: number; bytes: string }[];
  replaced: { seq: number; bytes: string }[];
}

/** The intent as stored in log_heads.pending. */
export function encodeIntent(intent: Intent): Buffer {
  const b64 = (e: EncodedEntry) => ({ seq: e.seq, bytes: Buffer.from(e.bytes).toString("base64") });
  const json: IntentJson = {
    ...intent,
    entries: intent.entries.map(b64),
    replaced: intent.replaced.map(b64),
  };
  return Buffer.from(JSON.stringify(json));
}

/** Reads an intent back from log_heads.pending. */
export function decodeIntent(bytes: Uint8Array): Intent {
  const json = JSON.parse(Buffer.from(bytes).toString("utf8")) as IntentJson;
  const raw = (e: { seq: number; bytes: string }) => ({
    seq: e.seq,
    bytes: new Uint8Array(Buffer.from(e.bytes, "base64")),
  });
  return { ...json, entries: json.entries.map(raw), replaced: json.replaced.map(raw) };
}

/** What a commit does to one conversation, all of the commit's writes to it merged in order. */
export interface Plan {
  /** The conversation written to. */
  conversationId: string;
  /** Its new metadata, when the commit writes it. */
  conversation?: ConversationRecord;
  /** The first appended seq; 0 when nothing is appended. */
  firstSeq: number;
  /** The last appended seq; 0 when nothing is appended. */
  lastSeq: number;
  /** Encoded entries by seq, rewrites within the commit already applied. */
  appended: Map<number, Uint8Array>;
  /** Rewrites of seqs that must already be in the log. */
  replaced: Map<number, Uint8Array>;
  /** The highest seq rewritten that must already be in the log; 0 for none. */
  needsHead: number;
  /** Idempotency records by device and client_msg_id (the last write wins). */
  idempotency: Map<string, IdempotencyKey>;
  /** Each touched member's final state, by user id. */
  members: Map<string, MemberOp>;
}

/**
 * Merges a commit's writes per conversation and checks everything that needs no read. The rules
 * are the LMDB engine's, where writes apply one after another in the order given.
 */
export function plan(writes: ConversationWrite[]): Plan[] {
  const plans = new Map<string, Plan>();
  for (const write of writes) {
    const id = write.conversationId;
    let p = plans.get(id);
    if (p === undefined) {
      p = {
        conversationId: id,
        firstSeq: 0,
        lastSeq: 0,
        appended: new Map(),
        replaced: new Map(),
        needsHead: 0,
        idempotency: new Map(),
        members: new Map(),
      };
      plans.set(id, p);
    }
    if (write.conversation !== undefined) {
      // A record without pins keeps those of an earlier write of the same commit (the port's rule).
      const pins = write.conversation.pins ?? p.conversation?.pins;
      p.conversation = conversationRecord({ ...write.conversation, ...(pins !== undefined && { pins }) });
    }
    const append = (write.append ?? []).map((e) => ({ seq: seqOf(e, id), bytes: entryBytes(e) }));
    for (const [i, e] of append.entries()) {
      const expected = i === 0 ? (p.lastSeq > 0 ? p.lastSeq + 1 : e.seq) : append[i - 1]!.seq + 1;
      if (e.seq !== expected) {
        throw conflict(`appended seqs of ${id} are not contiguous: ${expected - 1} then ${e.seq}`);
      }
      if (p.firstSeq === 0) p.firstSeq = e.seq;
      p.lastSeq = e.seq;
      p.appended.set(e.seq, e.bytes);
    }
    for (const entry of write.replace ?? []) {
      const seq = seqOf(entry, id);
      const bytes = entryBytes(entry);
      if (p.lastSeq > 0 && seq > p.lastSeq) {
        throw new StoreError("not_found", `cannot replace unwritten seq ${seq} of ${id}`);
      }
      if (p.appended.has(seq)) {
        p.appended.set(seq, bytes);
      } else {
        p.replaced.set(seq, bytes);
        p.needsHead = Math.max(p.needsHead, seq);
      }
    }
    for (const k of write.idempotency ?? []) {
      p.idempotency.set(`${k.deviceId}\n${k.clientMsgId}`, {
        deviceId: k.deviceId,
        clientMsgId: k.clientMsgId,
        seq: k.seq,
      });
    }
    for (const m of write.putMembers ?? []) p.members.set(m.userId, { put: memberRecord(m) });
    for (const userId of write.removeMembers ?? []) p.members.set(userId, { remove: userId });
  }
  return [...plans.values()];
}

/** The intent of an appending plan; commitTs is the head's, which its cells must sort after. */
export function intentOf(p: Plan, commitTs: number): Intent {
  return {
    id: randomUUID(),
    conversationId: p.conversationId,
    // Each commit's cells must sort after the previous commit's, even if this process's clock is
    // behind the last writer's.
    tsMicros: Math.max(Date.now() * 1000, commitTs + 1),
    atMs: Date.now(),
    firstSeq: p.firstSeq,
    lastSeq: p.lastSeq,
    entries: [...p.appended].map(([seq, bytes]) => ({ seq, bytes })),
    replaced: [...p.replaced].map(([seq, bytes]) => ({ seq, bytes })),
    ...(p.conversation !== undefined && { conversation: p.conversation }),
    idempotency: [...p.idempotency.values()],
    members: [...p.members.values()],
  };
}
