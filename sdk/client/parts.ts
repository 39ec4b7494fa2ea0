import { ReorderBuffer } from "../reorder.js";
import { Accounts } from "./accounts.js";
import { Acks } from "./acks.js";
import { Attachments } from "./attachments.js";
import { Calls } from "./calls.js";
import type { ClientContext } from "./context.js";
import { Conversations } from "./conversations.js";
import { EntryDecoder } from "./decode.js";
import { Delivery } from "./delivery.js";
import { History } from "./history.js";
import { SendQueue } from "./outbox.js";
import { Presence } from "./presence.js";
import { Receiver } from "./receive.js";
import { Safety } from "./safety.js";
import { Sealer } from "./sealing.js";
import { Sends } from "./sends.js";
import { StreamLoop } from "./stream.js";

/** The collaborators of one SwitchboardClient, each with one job. */
export interface ClientParts {
  /** Connects, resumes with backoff, pings; the current stream. */
  stream: StreamLoop;
  /** The outbox: sends in order, in flight up to the limit, retried, settled. */
  queue: SendQueue;
  /** Encryption of sends, on one chain; re-encryption after device mismatches. */
  sealer: Sealer;
  /** What the app sends (stream and unary). */
  sends: Sends;
  /** Delivered and read cursors to the server. */
  acks: Acks;
  /** Typing indicators and presence subscriptions. */
  presence: Presence;
  /** Log entries into what the app sees. */
  decoder: EntryDecoder;
  /** Entries to the app, in order, with back-pressure. */
  delivery: Delivery;
  /** The frames from the server. */
  receiver: Receiver;
  /** Per-conversation seq order and gap filling. */
  reorder: ReorderBuffer;
  attachments: Attachments;
  accounts: Accounts;
  safety: Safety;
  conversations: Conversations;
  /** Call signalling (calls.ts). */
  calls: Calls;
  /** History for a newly linked device (history.ts). */
  history: History;
}

/**
 * Builds a client's parts around its context and takes the outbox of the last run back. Parts that
 * call each other both ways (the queue and the sealer, the receiver and the reorder buffer) are
 * joined through closures over `parts`, which are only called once everything is built.
 */
export function assembleParts(ctx: ClientContext): ClientParts {
  const parts = {} as ClientParts;
  const connected = (): boolean => parts.stream.ready !== undefined;
  parts.stream = new StreamLoop(ctx, {
    frame: (s, frame) => parts.receiver.handle(s, frame),
    backPressure: () => parts.delivery.backPressure(),
    ended: () => {
      parts.reorder.pause();
      parts.queue.requeueInFlight();
    },
    stopped: (error) => parts.queue.abandon(error),
  });
  parts.queue = new SendQueue(ctx, parts.stream, (p, mismatch) => void parts.sealer.reencrypt(p, mismatch));
  parts.sealer = new Sealer(ctx, parts.queue, connected);
  parts.sends = new Sends(ctx, parts.queue, parts.sealer);
  parts.acks = new Acks(ctx, parts.stream);
  parts.presence = new Presence(parts.stream);
  parts.accounts = new Accounts(ctx.conn);
  parts.decoder = new EntryDecoder(ctx, parts.sealer, {
    openDirect: (peerUserId) => parts.conversations.openDirect(peerUserId),
    sendContentUnary: (conversationId, content, clientMsgId, attempts) =>
      parts.sends.contentUnary(conversationId, content, clientMsgId, attempts),
    connected,
    historyOffered: (raw, transfer) => parts.history.offered(raw, transfer),
  });
  parts.conversations = new Conversations(ctx, parts.decoder);
  parts.history = new History(ctx, {
    listConversations: () => parts.conversations.listConversations(),
    getHistory: (id, options) => parts.conversations.getHistory(id, options),
    createGroup: (title, members) => parts.conversations.createGroup(title, members),
    leaveGroup: (id) => parts.conversations.leaveGroup(id),
    sendContentUnary: (id, content, clientMsgId) => parts.sends.contentUnary(id, content, clientMsgId, 3),
  });
  parts.safety = new Safety(ctx.conn, (id, options) => parts.conversations.getHistory(id, options));
  parts.delivery = new Delivery(ctx, parts.decoder, parts.acks);
  parts.attachments = new Attachments(ctx, parts.sealer);
  parts.calls = new Calls(ctx, parts.stream);
  parts.receiver = new Receiver(ctx, {
    calls: parts.calls,
    stream: parts.stream,
    presence: parts.presence,
    acks: parts.acks,
    queue: parts.queue,
    delivery: parts.delivery,
    reorder: () => parts.reorder,
  });
  parts.reorder = new ReorderBuffer(
    ctx.profile.cursors().map(([id, c]) => [id, c.delivered] as const),
    {
      gapTimeoutMs: ctx.tuning.gapTimeoutMs,
      pageSize: ctx.tuning.syncPageSize,
      requestSync: (conversationId, afterSeq, limit) =>
        parts.receiver.requestSync(conversationId, afterSeq, limit),
      // The server resends what it thinks we lack; telling it our cursor again stops that.
      onDuplicate: (conversationId) => parts.acks.schedule(conversationId, 0),
    },
  );
  for (const item of ctx.profile.outbox()) parts.queue.restore(item);
  return parts;
}
