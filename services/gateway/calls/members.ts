/**
 * Group member lists for call checks, from the sequencer, trusted for CALL_LIMITS.pairCheckMs;
 * bounded in lists and in ids.
 */
import type { Client } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import type { SequencerService } from "../../../gen/switchboard/internal/v1/sequencer_pb.js";
import { PermissionError } from "../../common/errors.js";
import { inBand } from "../session/frames.js";
import { CALL_LIMITS } from "./limits.js";

export class MemberLists {
  private readonly members = new Map<string, { users: Set<string>; until: number }>();
  /** Member ids in `members`, all lists together (bounded by CALL_LIMITS.groupMemberIds). */
  private memberIds = 0;

  constructor(
    private readonly sequencer: Client<typeof SequencerService>,
    private readonly now: () => number,
  ) {}

  /** PERMISSION_DENIED unless userId is a member of the group (asked again once if not, when cached). */
  async require(conversationId: string, userId: string): Promise<void> {
    if ((await this.list(conversationId)).has(userId)) return;
    if ((await this.list(conversationId, true)).has(userId)) return;
    throw new PermissionError(`calls in group ${conversationId} are between its members`);
  }

  /** The group's members, from the sequencer, trusted for CALL_LIMITS.pairCheckMs. */
  async list(conversationId: string, fresh = false): Promise<Set<string>> {
    const now = this.now();
    const known = this.members.get(conversationId);
    if (!fresh && known !== undefined && known.until > now) return known.users;
    let users = new Set<string>();
    try {
      users = new Set((await this.sequencer.getMembers({ conversationId })).userIds);
    } catch (err) {
      // No such group: nobody is a member.
      if (inBand(err).code !== Code.NotFound) throw err;
    }
    this.memberIds -= this.members.get(conversationId)?.users.size ?? 0;
    this.members.delete(conversationId);
    this.members.set(conversationId, { users, until: now + CALL_LIMITS.pairCheckMs });
    this.memberIds += users.size;
    // Oldest first, until within both bounds (the newest list always stays).
    for (const [k, v] of this.members) {
      if (this.members.size <= CALL_LIMITS.groupMemberLists && this.memberIds <= CALL_LIMITS.groupMemberIds)
        break;
      if (k === conversationId) break;
      this.members.delete(k);
      this.memberIds -= v.users.size;
    }
    return users;
  }
}
