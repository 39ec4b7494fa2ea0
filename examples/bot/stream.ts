import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Entry, OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import { type ConnectRequest, ConnectRequestSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import type { Api } from "./api.js";
import { replyTo } from "./echo.js";
import { backoffMs, type Log, pause } from "./util.js";

/**
 * Stream mode: one GatewayService.Connect stream, reconnected with backoff when it fails with
 * UNAVAILABLE (server restart, lost connection). Any other code ends the bot: UNAUTHENTICATED
 * (device revoked), ABORTED (a newer stream of the same device took over), and so on.
 */
export async function runStream(api: Api, botUserId: string, signal: AbortSignal, log: Log): Promise<void> {
  // The highest seq acked per conversation. It outlives each stream: after a reconnect the server
  // resends everything after the cursors it has, and whatever is at or below these is a duplicate.
  const acked = new Map<string, bigint>();
  for (let attempt = 0; !signal.aborted; attempt++) {
    let why = "the server ended the stream";
    try {
      await oneStream(api, botUserId, acked, signal, log, () => {
        attempt = 0;
      });
    } catch (err) {
      const e = ConnectError.from(err);
      if (signal.aborted) return;
      if (e.code !== Code.Unavailable) throw e;
      why = e.message;
    }
    if (signal.aborted) return;
    const delay = backoffMs(attempt);
    log(`stream: ${why}; reconnecting in ${delay} ms`);
    await pause(delay, signal);
  }
}

async function oneStream(
  api: Api,
  botUserId: string,
  acked: Map<string, bigint>,
  signal: AbortSignal,
  log: Log,
  onReady: () => void,
): Promise<void> {
  const out = new FrameQueue<ConnectRequest>();
  const seen = new Map(acked); // highest seq received per conversation
  const pending = new Map<string, Entry>(); // reply client_msg_id -> the entry it answers
  // Per conversation, the entries received and not yet acked, in seq order. An entry is done once
  // its reply is durable (send_ack), refused for good, or it needed no reply.
  const unacked = new Map<string, Array<{ seq: bigint; done: boolean }>>();
  const moved = new Set<string>(); // conversations whose cursor moved since the last ack frame
  let ackTimer: NodeJS.Timeout | undefined;

  const send = (entry: OutgoingEntry) =>
    out.push(create(ConnectRequestSchema, { frame: { case: "send", value: entry } }));

  // Acks are cumulative: "I have everything up to seq N". The cursor moves only over a prefix of
  // done entries, so an entry whose reply is still in flight comes back after a crash.
  function done(conversationId: string, seq: bigint): void {
    const line = unacked.get(conversationId) ?? [];
    const item = line.find((i) => i.seq === seq);
    if (item) item.done = true;
    let upTo: bigint | undefined;
    while (line[0]?.done) upTo = line.shift()!.seq;
    if (upTo === undefined) return;
    acked.set(conversationId, upTo);
    moved.add(conversationId);
    // One ack frame for everything that finished in the next 100 ms: frames are rate limited.
    ackTimer ??= setTimeout(flushAcks, 100);
  }
  function flushAcks(): void {
    ackTimer = undefined;
    const cursors = [...moved].map((conversationId) => ({ conversationId, seq: acked.get(conversationId)! }));
    moved.clear();
    for (let i = 0; i < cursors.length; i += 256)
      out.push(
        create(ConnectRequestSchema, {
          frame: { case: "ack", value: { cursors: cursors.slice(i, i + 256) } },
        }),
      );
  }

  function receive(entry: Entry): void {
    const { conversationId, seq } = entry;
    // At-least-once delivery: drop what we already have. The server sends each conversation in
    // seq order and fills any gap from the log before going on, so a bot needs no reorder buffer.
    if (seq <= (seen.get(conversationId) ?? 0n)) return;
    seen.set(conversationId, seq);
    unacked.set(conversationId, [...(unacked.get(conversationId) ?? []), { seq, done: false }]);
    const reply = replyTo(entry, botUserId);
    if (reply === undefined) {
      done(conversationId, seq);
      return;
    }
    pending.set(reply.clientMsgId, entry);
    send(reply);
  }

  // On shutdown: send the last acks and half-close; the server answers the sends in flight and
  // ends the stream. A reply whose ack we miss is resent next time and deduplicated.
  const stop = () => {
    if (ackTimer !== undefined) clearTimeout(ackTimer);
    flushAcks();
    out.close();
  };
  signal.addEventListener("abort", stop, { once: true });
  try {
    for await (const res of api.gateway.connect(out)) {
      const f = res.frame;
      switch (f.case) {
        case "ready":
          onReady();
          log(`ready: stream ${f.value.sessionId}, at most ${f.value.limits?.sendsPerSecond} sends/s`);
          break;
        case "caughtUp":
          log(`caught up: ${f.value.entries} entries were waiting`);
          break;
        case "message":
          for (const entry of f.value.entries) receive(entry);
          break;
        case "sendAck": {
          const entry = pending.get(f.value.clientMsgId);
          if (entry === undefined) break;
          pending.delete(f.value.clientMsgId);
          log(`replied to ${entry.conversationId}#${entry.seq} with #${f.value.seq}`);
          done(entry.conversationId, entry.seq);
          break;
        }
        case "sendError": {
          const entry = pending.get(f.value.clientMsgId);
          if (entry === undefined) break;
          const reply = replyTo(entry, botUserId)!;
          if (f.value.retryAfterMs > 0) {
            // Rate limit, too many in flight, storage busy: the same send, same key, later.
            setTimeout(() => send(reply), f.value.retryAfterMs);
          } else {
            pending.delete(f.value.clientMsgId);
            log(
              `reply to ${entry.conversationId}#${entry.seq} refused (code ${f.value.code}): ${f.value.message}`,
            );
            done(entry.conversationId, entry.seq);
          }
          break;
        }
        case "error":
          log(`frame ${f.value.frame} refused (code ${f.value.code}): ${f.value.message}`);
          break;
        default:
          // receipt, typing, presence, pong, sync_page: nothing a bot needs.
          break;
      }
    }
  } finally {
    signal.removeEventListener("abort", stop);
    if (ackTimer !== undefined) clearTimeout(ackTimer);
    out.close();
  }
}

/** The request side of the stream: frames pushed here are written in order until close(). */
class FrameQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private closed = false;
  private wake: (() => void) | undefined;

  push(item: T): void {
    if (this.closed) return;
    this.items.push(item);
    this.wake?.();
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) yield item;
      else if (this.closed) return;
      else await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}
