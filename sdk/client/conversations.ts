import type { Conversation, Member, MemberRole } from "../../gen/switchboard/v1/conversations_pb.js";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type { IncomingEntry } from "../types.js";
import type { ClientContext } from "./context.js";
import type { EntryDecoder } from "./decode.js";
import { required } from "./errors.js";

/**
 * The disappearing-message timers a server offers unless configured otherwise, in seconds
 * (SwitchboardClient.setDisappearingTimer); 0 turns them off.
 */
export const DISAPPEARING = { off: 0, day: 86_400, week: 604_800, ninetyDays: 7_776_000 } as const;

/** ConversationService calls: direct conversations, groups and their members, history, mutes. */
export class Conversations {
  constructor(
    private readonly ctx: ClientContext,
    private readonly decoder: EntryDecoder,
  ) {}

  private get api() {
    return this.ctx.conn.conversations;
  }

  async openDirect(peerUserId: string): Promise<Conversation> {
    return required((await this.api.openDirect({ peerUserId })).conversation, "conversation");
  }

  async createGroup(title: string, memberUserIds: readonly string[]): Promise<Conversation> {
    const res = await this.api.createGroup({ title, memberUserIds: [...memberUserIds] });
    return required(res.conversation, "conversation");
  }

  async addMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return (await this.api.addMembers({ conversationId, userIds: [...userIds] })).entry;
  }

  async removeMembers(conversationId: string, userIds: readonly string[]): Promise<Entry | undefined> {
    return (await this.api.removeMembers({ conversationId, userIds: [...userIds] })).entry;
  }

  async leaveGroup(conversationId: string): Promise<Entry | undefined> {
    return (await this.api.leaveGroup({ conversationId })).entry;
  }

  async setRole(
    conversationId: string,
    userIds: readonly string[],
    role: MemberRole,
  ): Promise<Entry | undefined> {
    return (await this.api.setRole({ conversationId, userIds: [...userIds], role })).entry;
  }

  async renameGroup(conversationId: string, title: string): Promise<Entry | undefined> {
    return (await this.api.renameGroup({ conversationId, title })).entry;
  }

  async listConversations(): Promise<Conversation[]> {
    return (await this.api.listConversations({})).conversations;
  }

  async getConversation(conversationId: string): Promise<{ conversation: Conversation; members: Member[] }> {
    const res = await this.api.getConversation({ conversationId });
    return { conversation: required(res.conversation, "conversation"), members: res.members };
  }

  async setMute(conversationId: string, mutedUntilMs: bigint | number): Promise<void> {
    await this.api.setMute({ conversationId, mutedUntilMs: BigInt(mutedUntilMs) });
  }

  async setDisappearingTimer(
    conversationId: string,
    durationSeconds: number,
    adminsOnly: boolean,
  ): Promise<Entry | undefined> {
    return (await this.api.setDisappearingTimer({ conversationId, durationSeconds, adminsOnly })).entry;
  }

  /** A page of a conversation's log, decoded. */
  async getHistory(
    conversationId: string,
    options: { afterSeq?: bigint | number; limit?: number },
  ): Promise<{ entries: IncomingEntry[]; lastSeq: bigint; hasMore: boolean }> {
    const res = await this.api.getHistory({
      conversationId,
      afterSeq: BigInt(options.afterSeq ?? 0),
      limit: options.limit ?? 0,
    });
    const entries: IncomingEntry[] = [];
    for (const raw of res.entries) entries.push(await this.decoder.toIncoming(raw));
    // Retry requests this page asked for go out before the caller (a command) closes.
    await this.decoder.retriesSettled();
    // A device that only reads history must top up its one-time prekeys too.
    await this.ctx.e2ee?.ensureKeysSoon().catch((err: unknown) => this.ctx.backgroundFailed(err));
    return { entries, lastSeq: res.lastSeq, hasMore: res.hasMore };
  }
}
