/**
 * Pinned messages (Entry.pin; docs/protocol.md, "Pins"). A pin or unpin is an entry of the log,
 * sent through the outbox like a delete (durable, retried with its idempotency key); what is
 * pinned now comes with the conversation (Conversation.pins), kept by the server beside the log.
 */
import type { Conversation, PinnedMessage } from "../../gen/switchboard/v1/conversations_pb.js";
import type { SendResult } from "../types.js";
import type { SendQueue } from "./outbox.js";

/** Messages a conversation may have pinned at once (the server's MAX_PINS). */
export const MAX_PINS = 3;

/** A pinned message as the app sees it. */
export interface Pin {
  /** The pinned message's seq. */
  seq: bigint;
  /** The seq of the pin entry. */
  pinSeq: bigint;
  /** Who pinned it. */
  pinnedBy: string;
  /** When it was pinned, in milliseconds since the Unix epoch. */
  pinnedAtMs: bigint;
}

function toPin(p: PinnedMessage): Pin {
  return { seq: p.seq, pinSeq: p.pinSeq, pinnedBy: p.pinnedByUserId, pinnedAtMs: p.pinnedAtMs };
}

/** `client.pins`: pin, unpin and list a conversation's pinned messages. */
export class Pins {
  constructor(
    private readonly queue: Pick<SendQueue, "enqueue">,
    private readonly conversation: (conversationId: string) => Promise<{ conversation: Conversation }>,
  ) {}

  /**
   * Pins a message (group admins, or either member of a direct conversation). Refused with
   * ALREADY_EXISTS when it is pinned, FAILED_PRECONDITION when MAX_PINS are, NOT_FOUND for a
   * message this user cannot read.
   */
  pin(
    conversationId: string,
    seq: bigint | number,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.queue.enqueue(
      conversationId,
      { case: "pin", value: { targetSeq: BigInt(seq), unpin: false } },
      options.clientMsgId,
    );
  }

  /** Unpins a message; FAILED_PRECONDITION when it is not pinned. */
  unpin(
    conversationId: string,
    seq: bigint | number,
    options: { clientMsgId?: string } = {},
  ): Promise<SendResult> {
    return this.queue.enqueue(
      conversationId,
      { case: "pin", value: { targetSeq: BigInt(seq), unpin: true } },
      options.clientMsgId,
    );
  }

  /**
   * The messages pinned now, oldest pin first, as the server lists them: unpinned and deleted
   * messages are gone from it, and so are messages from before this user joined or this device
   * was linked.
   */
  async list(conversationId: string): Promise<Pin[]> {
    const { conversation } = await this.conversation(conversationId);
    return conversation.pins.map(toPin);
  }
}
