/**
 * What a message may say about other entries and users besides its encrypted content: the entry it
 * replies to (reply_to_seq) and the users it mentions (mentioned_user_ids), both optional and both
 * checked against the conversation as the shard holds it, before a seq is assigned.
 */
import type { MessageBody } from "../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError, NotFoundError } from "../common/errors.js";
import type { MemberRecord } from "../store/types.js";
import type { ConversationState } from "./conversation.js";

/** Users one message may mention to the server, at most. */
export const MAX_MENTIONS = 64;

/**
 * Refuses a reply to an entry the sender cannot read (before its join, not committed yet, or
 * none) and mentions of anyone but the conversation's other current members. A reply's target
 * needs no read: the log is gapless, so every seq from the join to the committed one exists.
 */
export function checkReplyAndMentions(
  state: ConversationState,
  sender: MemberRecord,
  body: MessageBody,
): void {
  const target = body.replyToSeq;
  if (target !== 0n && (target < BigInt(sender.joinedSeq) || target > BigInt(state.committedSeq))) {
    throw new NotFoundError("reply_to_seq: no such entry");
  }
  const mentioned = body.mentionedUserIds;
  if (mentioned.length === 0) return;
  if (mentioned.length > MAX_MENTIONS) {
    throw new InvalidInputError(`mentioned_user_ids: at most ${MAX_MENTIONS}`);
  }
  const seen = new Set<string>();
  for (const userId of mentioned) {
    if (seen.has(userId)) throw new InvalidInputError("mentioned_user_ids: a user is named twice");
    seen.add(userId);
    if (userId === sender.userId)
      throw new InvalidInputError("mentioned_user_ids: the sender cannot mention itself");
    if (!state.members.has(userId)) {
      throw new InvalidInputError("mentioned_user_ids: only members of the conversation can be mentioned");
    }
  }
}
