/**
 * What the sequencer's hot state really holds per tail entry and per idempotency key, against
 * what its byte budget counts for them (services/sequencer/hot-state.ts). Fills conversation
 * states as the sequencer does, with entries shaped like the bench's sends (ids of the real
 * lengths, a 64-byte payload decoded as a view into a larger request), and compares the heap
 * after a full GC with the budget's estimate.
 *
 *   node --expose-gc --import tsx bench/hot-state-memory.ts [entries]
 */
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { EntrySchema, MessageBodySchema } from "../gen/switchboard/v1/entry_pb.js";
import { ConversationState } from "../services/sequencer/conversation.js";
import { keyBytes, STATE_OVERHEAD_BYTES } from "../services/sequencer/hot-state.js";

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with node --expose-gc");
const entries = Number(process.argv[2] ?? 100_000);
const CONVERSATIONS = 500;
const USERS = 1000;

const id = (prefix: string) => `${prefix}_${randomBytes(16).toString("hex").slice(0, 26)}`;
const uuid = () =>
  randomBytes(16)
    .toString("hex")
    .replace(/(.{8})(.{4})(.{4})(.{4})(.{12})/, "$1-$2-$3-$4-$5");
const states = Array.from(
  { length: CONVERSATIONS },
  () => new ConversationState(id("d"), undefined, new Map(), 0),
);
const users = Array.from({ length: USERS }, () => ({ userId: id("u"), deviceId: id("dv") }));

/** The JS heap and the ArrayBuffers' bytes after a full GC; the RSS beside it, in rss. */
function heap(): number {
  gc?.();
  const m = process.memoryUsage();
  rss = m.rss;
  return m.heapUsed + m.arrayBuffers;
}
let rss = 0;

const baseline = heap();
const rssBaseline = rss;
let estimated = 0;
for (let i = 0; i < entries; i++) {
  const state = states[i % CONVERSATIONS]!;
  const user = users[i % USERS]!;
  // A decoded send's payload is a view into the request it arrived in.
  const payload = new Uint8Array(512).subarray(100, 164);
  state.lastSeq++;
  const entry = create(EntrySchema, {
    conversationId: state.id,
    seq: BigInt(state.lastSeq),
    serverTimeMs: BigInt(Date.now()),
    senderUserId: user.userId,
    senderDeviceId: user.deviceId,
    clientMsgId: uuid(),
    body: { case: "message", value: create(MessageBodySchema, { payload }) },
  });
  state.pushTail(entry);
}
const withEntries = heap();
// What the budget counts for the states' entries: their tails and recent senders.
for (const state of states) estimated += state.bytes() - STATE_OVERHEAD_BYTES;
const rssWithEntries = rss;
let keysEstimated = 0;
for (let i = 0; i < entries; i++) {
  const state = states[i % CONVERSATIONS]!;
  const key = `${users[i % USERS]!.deviceId}\n${uuid()}`;
  state.remember(key, { seq: i + 1, serverTimeMs: Date.now(), expiresAtMs: 0, durable: undefined });
  keysEstimated += keyBytes(key);
}
const withKeys = heap();

const perEntry = (withEntries - baseline) / entries;
const perKey = (withKeys - withEntries) / entries;
process.stdout.write(
  `${entries} tail entries in ${CONVERSATIONS} conversations: ${perEntry.toFixed(0)} B each on the heap after a full GC, ` +
    `the budget counts ${(estimated / entries).toFixed(0)} B (${((100 * estimated) / entries / perEntry).toFixed(0)} %); ` +
    `RSS grew ${((rssWithEntries - rssBaseline) / entries).toFixed(0)} B each (an upper bound: with what the allocator kept of the garbage made on the way)\n` +
    `${entries} idempotency keys: ${perKey.toFixed(0)} B each, the budget counts ${(keysEstimated / entries).toFixed(0)} B ` +
    `(${((100 * keysEstimated) / entries / perKey).toFixed(0)} %)\n`,
);
// Keep the states reachable until measured.
if (states.length === 0) process.stdout.write("\n");
