/**
 * Pinned messages (Entry.pin; docs/protocol.md, "Pins"). A pin or unpin is an entry of the log,
 * sent through the outbox like a delete (durable, retried with its idempotency key); what is
 * pinned now comes with the conversation (Conversation.pins), kept by the server beside the log.
 */
import type { Conversation, PinnedMessage } from "../../gen/switchboard/v1/conversations_pb.js";
import type { SendResult } from "../types.js";
import type { OutgoingBody } from "./bodies.js";
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

/** How a pin or unpin is sent. */
export interface PinOptions {
  /** The idempotency key; a new one by default. */
  clientMsgId?: string;
  /** Without the stream (GatewayService.Send, retried on transient failures), not the outbox. */
  unary?: boolean;
}

/** `client.pins`: pin, unpin and list a conversation's pinned messages. */
export class Pins {
  constructor(
    private readonly queue: Pick<SendQueue, "enqueue">,
    /** Sends a body without the stream (GatewayService.Send). */
    private readonly unary: (
      conversationId: string,
      body: OutgoingBody,
      clientMsgId?: string,
    ) => Promise<SendResult>,
    private readonly conversation: (conversationId: string) => Promise<{ conversation: Conversation }>,
  ) {}

  /**
   * Pins a message (group admins, or either member of a direct conversation). Refused with
   * ALREADY_EXISTS when it is pinned, FAILED_PRECONDITION when MAX_PINS are, NOT_FOUND for a
   * message this user cannot read. Through the outbox and the stream (durable, retried until the
   * server answers), or with `unary` without the stream (GatewayService.Send), for scripts.
   */
  pin(conversationId: string, seq: bigint | number, options: PinOptions = {}): Promise<SendResult> {
    return this.send(conversationId, seq, false, options);
  }

  /** Unpins a message; FAILED_PRECONDITION when it is not pinned. Options as for pin. */
  unpin(conversationId: string, seq: bigint | number, options: PinOptions = {}): Promise<SendResult> {
    return this.send(conversationId, seq, true, options);
  }

  private send(
    conversationId: string,
    seq: bigint | number,
    unpin: boolean,
    options: PinOptions,
  ): Promise<SendResult> {
    const body: OutgoingBody = { case: "pin", value: { targetSeq: BigInt(seq), unpin } };
    return options.unary === true
      ? this.unary(conversationId, body, options.clientMsgId)
      : this.queue.enqueue(conversationId, body, options.clientMsgId);
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
