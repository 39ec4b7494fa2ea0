import { Code, ConnectError } from "@connectrpc/connect";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import type { Api } from "./api.js";
import { replyTo } from "./echo.js";
import { backoffMs, type Log, pause } from "./util.js";

/**
 * Unary mode: no stream. Every pollMs, list the bot's conversations; in each one whose last seq is
 * past this device's delivered cursor (which ListConversations returns), read the history after
 * the cursor with GetHistory, reply with GatewayService.Send, then move the cursor with
 * GatewayService.Ack. The server keeps the cursor, so the bot stores nothing but its credential,
 * senders see "delivered", and a stream the device opens later starts after it.
 */
export async function runUnary(
  api: Api,
  botUserId: string,
  pollMs: number,
  signal: AbortSignal,
  log: Log,
): Promise<void> {
  let ready = false;
  for (let failures = 0; !signal.aborted; ) {
    try {
      const { conversations } = await api.conversations.listConversations({}, { signal });
      if (!ready) log(`ready: polling ${conversations.length} conversations every ${pollMs} ms`);
      ready = true;
      for (const c of conversations) {
        let after = c.deliveredUpTo;
        while (after < c.lastSeq && !signal.aborted) {
          const page = await api.conversations.getHistory(
            { conversationId: c.conversationId, afterSeq: after, limit: 100 },
            { signal },
          );
          for (const entry of page.entries) {
            const reply = replyTo(entry, botUserId);
            if (reply !== undefined) {
              const seq = await sendReply(api, reply, signal, log);
              if (seq !== undefined) log(`replied to ${entry.conversationId}#${entry.seq} with #${seq}`);
            }
            after = entry.seq;
          }
          if (page.entries.length === 0) break;
          // Acked after the replies are durable: a crash before this line only repeats replies,
          // and their client_msg_ids make the repeats no-ops.
          await api.gateway.ack(
            { delivered: [{ conversationId: c.conversationId, seq: after }] },
            { signal },
          );
          if (!page.hasMore) break;
        }
      }
      failures = 0;
    } catch (err) {
      const e = ConnectError.from(err);
      if (signal.aborted) return;
      if (e.code !== Code.Unavailable) throw e;
      // Server restarting or unreachable: the cursor did not move, so the same entries (and the
      // same reply keys) come round again.
      log(`poll: ${e.message}; retrying`);
      await pause(backoffMs(failures++), signal);
      continue;
    }
    await pause(pollMs, signal);
  }
}

/**
 * GatewayService.Send, answered once the reply is durable. Waits out the rate limit using the
 * server's `retry-after-ms` trailer; UNAVAILABLE goes up to the poll loop; any other refusal
 * (the bot was removed from the group, say) is final for this entry.
 */
async function sendReply(api: Api, entry: OutgoingEntry, signal: AbortSignal, log: Log) {
  for (;;) {
    try {
      const r = await api.gateway.send({ entry }, { signal });
      return r.seq;
    } catch (err) {
      const e = ConnectError.from(err);
      const retryAfterMs = Number(e.metadata.get("retry-after-ms") ?? 0);
      if (e.code === Code.ResourceExhausted && retryAfterMs > 0 && !signal.aborted) {
        await pause(retryAfterMs, signal);
        continue;
      }
      if (e.code === Code.Unavailable || signal.aborted) throw e;
      log(`reply to ${entry.conversationId} refused: ${e.message}`);
      return undefined;
    }
  }
}
