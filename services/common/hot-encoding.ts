import type { DescMessage } from "@bufbuild/protobuf";
import {
  type DeviceCiphertext,
  DeviceCiphertextSchema,
  type Entry,
  EntrySchema,
  type MessageBody,
  MessageBodySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import {
  type ConnectResponse,
  ConnectResponseSchema,
  type ReceiptFrame,
  ReceiptFrameSchema,
  ReceiptsFrameSchema,
  type SendAckFrame,
  SendAckFrameSchema,
} from "../../gen/switchboard/v1/gateway_pb.js";

/**
 * Protobuf encoders for the messages every 1:1 send makes the server write: the entry (stored,
 * and delivered in message frames), its send_ack, and the receipts that come back. Why by hand:
 * at 1,000 devices and 5,000 msgs/s, protobuf-es's toBinary on these took 7 % of the server's
 * main thread (docs/benchmarks.md, twenty-sixth pass). Most of that is its writer's buffers: it
 * starts at 128 bytes, grows by doubling and copies the result out again, three allocations for
 * an entry of 200 bytes. These size the message first and write it into one buffer.
 *
 * Each returns exactly toBinary's bytes (hot-encoding.test.ts, which compares them on generated
 * messages), or undefined for what it does not write: a body other than a message, unknown
 * fields, an integer outside 0..2^53-1. The caller then uses toBinary. And all of them stand
 * down unless the schemas have exactly the fields written here (`SHAPES`, checked once at load),
 * so a field added to the .proto is never silently dropped: toBinary writes it until this file
 * learns it, and the test fails until then.
 */

const LEN = 2;

/** The schema's fields as one line each: what the encoders below depend on. */
export function shapeOf(desc: DescMessage): string {
  return desc.fields
    .map((f) => {
      const type =
        f.fieldKind === "scalar" || (f.fieldKind === "list" && f.listKind === "scalar")
          ? `scalar:${f.scalar}`
          : (f.message?.typeName ?? f.enum?.typeName ?? "");
      return `${f.number} ${f.localName} ${f.fieldKind} ${type} ${f.presence} ${f.oneof?.localName ?? ""}`;
    })
    .sort()
    .join("\n");
}

/**
 * The shapes the encoders were written for (protobuf-es presence 2 is implicit: a proto3 field
 * without `optional`, written only when it is not its zero value).
 */
export const SHAPES: ReadonlyMap<DescMessage, string> = new Map<DescMessage, string>([
  [
    EntrySchema,
    [
      "1 conversationId scalar scalar:9 2 ",
      "10 message message switchboard.v1.MessageBody 1 body",
      "11 edit message switchboard.v1.EditBody 1 body",
      "12 delete message switchboard.v1.DeleteBody 1 body",
      "13 reaction message switchboard.v1.ReactionBody 1 body",
      "14 membership message switchboard.v1.MembershipBody 1 body",
      "15 call message switchboard.v1.CallLogBody 1 body",
      "16 disappearing message switchboard.v1.DisappearingTimerBody 1 body",
      "17 pin message switchboard.v1.PinBody 1 body",
      "2 seq scalar scalar:4 2 ",
      "20 redacted scalar scalar:8 2 ",
      "21 redactedBySeq scalar scalar:4 2 ",
      "22 expiresAtMs scalar scalar:3 2 ",
      "23 expired scalar scalar:8 2 ",
      "3 senderUserId scalar scalar:9 2 ",
      "4 senderDeviceId scalar scalar:9 2 ",
      "5 clientMsgId scalar scalar:9 2 ",
      "6 serverTimeMs scalar scalar:3 2 ",
    ].join("\n"),
  ],
  [
    MessageBodySchema,
    [
      "1 payload scalar scalar:12 2 ",
      "2 devicePayloads list switchboard.v1.DeviceCiphertext 2 ",
      "3 payloadType scalar scalar:13 2 ",
      "4 replyToSeq scalar scalar:4 2 ",
      "5 mentionedUserIds list scalar:9 2 ",
    ].join("\n"),
  ],
  [
    DeviceCiphertextSchema,
    [
      "1 deviceId scalar scalar:9 2 ",
      "2 registrationId scalar scalar:13 2 ",
      "3 ciphertext scalar scalar:12 2 ",
      "4 type scalar scalar:13 2 ",
    ].join("\n"),
  ],
  [
    SendAckFrameSchema,
    [
      "1 clientMsgId scalar scalar:9 2 ",
      "2 conversationId scalar scalar:9 2 ",
      "3 seq scalar scalar:4 2 ",
      "4 serverTimeMs scalar scalar:3 2 ",
      "41 expiresAtMs scalar scalar:3 2 ",
    ].join("\n"),
  ],
  [
    ReceiptFrameSchema,
    [
      "1 conversationId scalar scalar:9 2 ",
      "2 userId scalar scalar:9 2 ",
      "3 kind enum switchboard.v1.ReceiptKind 2 ",
      "4 upToSeq scalar scalar:4 2 ",
      "5 timeMs scalar scalar:3 2 ",
    ].join("\n"),
  ],
  [ReceiptsFrameSchema, "1 receipts list switchboard.v1.ReceiptFrame 2 "],
]);

/** The frame fields of ConnectResponse these write: all in its one oneof, at these numbers. */
const SEND_ACK_FIELD = 3;
const RECEIPT_FIELD = 5;
const RECEIPTS_FIELD = 17;

function responseFits(): boolean {
  const f = ConnectResponseSchema.field;
  return (
    ConnectResponseSchema.fields.every((x) => x.oneof?.localName === "frame") &&
    f.sendAck?.number === SEND_ACK_FIELD &&
    f.receipt?.number === RECEIPT_FIELD &&
    f.receipts?.number === RECEIPTS_FIELD
  );
}

/** Whether the schemas are the ones written for; if not, every encoder here returns undefined. */
export const HOT_ENCODING_FITS =
  [...SHAPES].every(([desc, shape]) => shapeOf(desc) === shape) && responseFits();

/** The bytes of a varint of n, a safe integer in 0..2^53-1. */
export function varintSize(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x4000) return 2;
  if (n < 0x200000) return 3;
  if (n < 0x10000000) return 4;
  if (n < 0x800000000) return 5;
  if (n < 0x40000000000) return 6;
  if (n < 0x2000000000000) return 7;
  return 8;
}

/** Writes a varint of n (a safe integer in 0..2^53-1) at offset; returns the offset after it. */
export function writeVarint(out: Uint8Array, offset: number, n: number): number {
  let at = offset;
  let v = n;
  while (v > 0x7fffffff) {
    out[at++] = (v % 0x80) | 0x80;
    v = Math.floor(v / 0x80);
  }
  while (v > 0x7f) {
    out[at++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[at++] = v;
  return at;
}

/** A 64-bit field as a number when it is in 0..2^53-1 (where Number() is exact); else -1. */
function int64(v: bigint): number {
  const n = Number(v);
  return n >= 0 && n <= Number.MAX_SAFE_INTEGER ? n : -1;
}

/** UTF-8 bytes of s, as TextEncoder writes it (a lone surrogate becomes U+FFFD, 3 bytes). */
const utf8Length = (s: string): number => Buffer.byteLength(s, "utf8");

/** Writes s's UTF-8 bytes (bytes of them, from utf8Length) at at; returns the offset after them. */
function writeString(out: Buffer, at: number, s: string, bytes: number): number {
  // As many bytes as UTF-16 units only when every unit is ASCII (any other takes 2 bytes or more
  // per unit): the ids the server writes, copied without a call into C++.
  if (bytes === s.length) {
    for (let i = 0; i < bytes; i++) out[at + i] = s.charCodeAt(i);
  } else {
    out.write(s, at, bytes, "utf8");
  }
  return at + bytes;
}

/*
 * Each message has a size function and a write function over the same fields, in field-number
 * order as toBinary writes them. A size function returns -1 for what this file does not write.
 * Tags are precomputed: (field number << 3) | wire type.
 */

/** A string field's bytes with a one-byte tag, from its UTF-8 length (each is measured once). */
function stringField(n: number): number {
  return n === 0 ? 0 : 1 + varintSize(n) + n;
}

function putString(out: Buffer, at: number, tag: number, s: string, n: number): number {
  if (n === 0) return at;
  out[at] = tag;
  return writeString(out, writeVarint(out, at + 1, n), s, n);
}

function bytesField(b: Uint8Array): number {
  return b.length === 0 ? 0 : 1 + varintSize(b.length) + b.length;
}

function putBytes(out: Buffer, at: number, tag: number, b: Uint8Array): number {
  if (b.length === 0) return at;
  out[at] = tag;
  const start = writeVarint(out, at + 1, b.length);
  out.set(b, start);
  return start + b.length;
}

/** A varint field's bytes with a one-byte tag; n is -1 for a value not written here. */
function varintField(n: number): number {
  return n === 0 ? 0 : 1 + varintSize(n);
}

function putVarint(out: Buffer, at: number, tag: number, n: number): number {
  if (n === 0) return at;
  out[at] = tag;
  return writeVarint(out, at + 1, n);
}

function hasUnknown(m: { $unknown?: unknown[] | undefined }): boolean {
  return m.$unknown !== undefined && m.$unknown.length > 0;
}

function deviceSize(d: DeviceCiphertext): number {
  if (hasUnknown(d)) return -1;
  return (
    stringField(utf8Length(d.deviceId)) +
    varintField(d.registrationId) +
    bytesField(d.ciphertext) +
    varintField(d.type)
  );
}

function putDevice(out: Buffer, at: number, d: DeviceCiphertext): number {
  let p = putString(out, at, 0x0a, d.deviceId, utf8Length(d.deviceId));
  p = putVarint(out, p, 0x10, d.registrationId);
  p = putBytes(out, p, 0x1a, d.ciphertext);
  return putVarint(out, p, 0x20, d.type);
}

function bodySize(m: MessageBody): number {
  const reply = int64(m.replyToSeq);
  if (hasUnknown(m) || reply < 0) return -1;
  let n = bytesField(m.payload) + varintField(m.payloadType) + varintField(reply);
  for (const d of m.devicePayloads) {
    const inner = deviceSize(d);
    if (inner < 0) return -1;
    n += 1 + varintSize(inner) + inner;
  }
  for (const u of m.mentionedUserIds) {
    const b = utf8Length(u);
    n += 1 + varintSize(b) + b;
  }
  return n;
}

function putBody(out: Buffer, at: number, m: MessageBody): number {
  let p = putBytes(out, at, 0x0a, m.payload);
  for (const d of m.devicePayloads) {
    out[p] = 0x12;
    p = putDevice(out, writeVarint(out, p + 1, deviceSize(d)), d);
  }
  p = putVarint(out, p, 0x18, m.payloadType);
  p = putVarint(out, p, 0x20, int64(m.replyToSeq));
  for (const u of m.mentionedUserIds) {
    const b = utf8Length(u);
    out[p] = 0x2a;
    p = writeString(out, writeVarint(out, p + 1, b), u, b);
  }
  return p;
}

/** Allocates the message's buffer; its own ArrayBuffer, since posting a view copies all of it. */
function allocate(size: number): Buffer {
  return Buffer.allocUnsafeSlow(size);
}

/** Checks that a write filled exactly the bytes sized: an unwritten byte would leak old memory. */
function filled(out: Buffer, at: number): Buffer {
  if (at !== out.length) throw new Error(`hot encoding wrote ${at} of ${out.length} bytes`);
  return out;
}

/** The entry's protobuf encoding, exactly toBinary's, or undefined for an entry not written here. */
export function encodeEntry(e: Entry): Uint8Array | undefined {
  if (!HOT_ENCODING_FITS || hasUnknown(e)) return undefined;
  const seq = int64(e.seq);
  const time = int64(e.serverTimeMs);
  const redactedBy = int64(e.redactedBySeq);
  const expires = int64(e.expiresAtMs);
  if (seq < 0 || time < 0 || redactedBy < 0 || expires < 0) return undefined;
  let inner = -1;
  if (e.body.case === "message") {
    inner = bodySize(e.body.value);
    if (inner < 0) return undefined;
  } else if (e.body.case !== undefined) {
    return undefined;
  }
  const conversation = utf8Length(e.conversationId);
  const user = utf8Length(e.senderUserId);
  const device = utf8Length(e.senderDeviceId);
  const msgId = utf8Length(e.clientMsgId);
  const size =
    stringField(conversation) +
    varintField(seq) +
    stringField(user) +
    stringField(device) +
    stringField(msgId) +
    varintField(time) +
    (inner < 0 ? 0 : 1 + varintSize(inner) + inner) +
    (e.redacted ? 3 : 0) +
    (redactedBy === 0 ? 0 : 2 + varintSize(redactedBy)) +
    (expires === 0 ? 0 : 2 + varintSize(expires)) +
    (e.expired ? 3 : 0);
  const out = allocate(size);
  let p = putString(out, 0, 0x0a, e.conversationId, conversation);
  p = putVarint(out, p, 0x10, seq);
  p = putString(out, p, 0x1a, e.senderUserId, user);
  p = putString(out, p, 0x22, e.senderDeviceId, device);
  p = putString(out, p, 0x2a, e.clientMsgId, msgId);
  p = putVarint(out, p, 0x30, time);
  if (e.body.case === "message") {
    out[p] = 0x52;
    p = putBody(out, writeVarint(out, p + 1, inner), e.body.value);
  }
  // Fields 20-23 have two-byte tags: (20 << 3 | 0) = 160 is 0xa0 0x01 as a varint.
  if (e.redacted) {
    out[p++] = 0xa0;
    out[p++] = 0x01;
    out[p++] = 1;
  }
  if (redactedBy !== 0) {
    out[p++] = 0xa8;
    out[p++] = 0x01;
    p = writeVarint(out, p, redactedBy);
  }
  if (expires !== 0) {
    out[p++] = 0xb0;
    out[p++] = 0x01;
    p = writeVarint(out, p, expires);
  }
  if (e.expired) {
    out[p++] = 0xb8;
    out[p++] = 0x01;
    out[p++] = 1;
  }
  return filled(out, p);
}

function sendAckSize(a: SendAckFrame): number {
  const seq = int64(a.seq);
  const time = int64(a.serverTimeMs);
  const expires = int64(a.expiresAtMs);
  if (hasUnknown(a) || seq < 0 || time < 0 || expires < 0) return -1;
  return (
    stringField(utf8Length(a.clientMsgId)) +
    stringField(utf8Length(a.conversationId)) +
    varintField(seq) +
    varintField(time) +
    // Field 41: (41 << 3 | 0) = 328 is a two-byte tag.
    (expires === 0 ? 0 : 2 + varintSize(expires))
  );
}

function putSendAck(out: Buffer, at: number, a: SendAckFrame): number {
  let p = putString(out, at, 0x0a, a.clientMsgId, utf8Length(a.clientMsgId));
  p = putString(out, p, 0x12, a.conversationId, utf8Length(a.conversationId));
  p = putVarint(out, p, 0x18, int64(a.seq));
  p = putVarint(out, p, 0x20, int64(a.serverTimeMs));
  const expires = int64(a.expiresAtMs);
  if (expires !== 0) {
    out[p++] = 0xc8;
    out[p++] = 0x02;
    p = writeVarint(out, p, expires);
  }
  return p;
}

function receiptSize(r: ReceiptFrame): number {
  const upTo = int64(r.upToSeq);
  const time = int64(r.timeMs);
  if (hasUnknown(r) || upTo < 0 || time < 0 || r.kind < 0) return -1;
  return (
    stringField(utf8Length(r.conversationId)) +
    stringField(utf8Length(r.userId)) +
    varintField(r.kind) +
    varintField(upTo) +
    varintField(time)
  );
}

function putReceipt(out: Buffer, at: number, r: ReceiptFrame): number {
  let p = putString(out, at, 0x0a, r.conversationId, utf8Length(r.conversationId));
  p = putString(out, p, 0x12, r.userId, utf8Length(r.userId));
  p = putVarint(out, p, 0x18, r.kind);
  p = putVarint(out, p, 0x20, int64(r.upToSeq));
  return putVarint(out, p, 0x28, int64(r.timeMs));
}

/** A frame sized, to be written in place into a buffer of the caller's (a batch of frames). */
export interface SizedFrame {
  size: number;
  /** Writes the frame at offset; returns the offset after it. */
  write(out: Buffer, offset: number): number;
}

/** One frame field of ConnectResponse around a message of `inner` bytes. */
function frameOf(field: number, inner: number, put: (out: Buffer, at: number) => number): SizedFrame {
  const tag = (field << 3) | LEN;
  return {
    size: varintSize(tag) + varintSize(inner) + inner,
    write: (out, offset) => put(out, writeVarint(out, writeVarint(out, offset, tag), inner)),
  };
}

/**
 * A send_ack, receipt or receipts frame, sized, to be written exactly as toBinary writes it;
 * undefined for any other frame, or one with something not written here.
 */
export function answerFrame(f: ConnectResponse): SizedFrame | undefined {
  if (!HOT_ENCODING_FITS || hasUnknown(f)) return undefined;
  switch (f.frame.case) {
    case "sendAck": {
      const a = f.frame.value;
      const inner = sendAckSize(a);
      return inner < 0 ? undefined : frameOf(SEND_ACK_FIELD, inner, (out, at) => putSendAck(out, at, a));
    }
    case "receipt": {
      const r = f.frame.value;
      const inner = receiptSize(r);
      return inner < 0 ? undefined : frameOf(RECEIPT_FIELD, inner, (out, at) => putReceipt(out, at, r));
    }
    case "receipts": {
      const list = f.frame.value;
      if (hasUnknown(list)) return undefined;
      const sizes: number[] = [];
      let inner = 0;
      for (const r of list.receipts) {
        const n = receiptSize(r);
        if (n < 0) return undefined;
        sizes.push(n);
        inner += 1 + varintSize(n) + n;
      }
      return frameOf(RECEIPTS_FIELD, inner, (out, at) => {
        let p = at;
        list.receipts.forEach((r, i) => {
          out[p] = 0x0a;
          p = putReceipt(out, writeVarint(out, p + 1, sizes[i]!), r);
        });
        return p;
      });
    }
    default:
      return undefined;
  }
}

/** answerFrame's frame in a buffer of its own. */
export function encodeAnswerFrame(f: ConnectResponse): Uint8Array | undefined {
  const frame = answerFrame(f);
  if (frame === undefined) return undefined;
  const out = allocate(frame.size);
  return filled(out, frame.write(out, 0));
}
