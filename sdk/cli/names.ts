import { type Conversation, ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import type { SwitchboardClient } from "../client.js";
import { printable } from "./files.js";

// Users and conversations as people name them (@username, a group's title) and as the server does (ids).

/** A username as shown: with one leading @. */
export function at(username: string): string {
  return `@${username.replace(/^@/, "")}`;
}

/** A username (with or without @) => the direct conversation; a conversation id => itself. */
export async function resolveConversation(client: SwitchboardClient, target: string): Promise<string> {
  if (target.startsWith("g_") || target.startsWith("d_")) return target;
  const username = target.replace(/^@/, "");
  if (username === client.username) throw new Error("that is you; name someone else or a group");
  const user = await client.userByUsername(username);
  return (await client.openDirect(user.userId)).conversationId;
}

/** The user ids of usernames (with or without @), in order; an unknown one is an error naming it. */
export async function userIdsFor(client: SwitchboardClient, usernames: readonly string[]): Promise<string[]> {
  const wanted = usernames.map((u) => u.replace(/^@/, ""));
  if (wanted.length === 0) return [];
  const users = await client.lookupUsers({ usernames: wanted });
  const byName = new Map(users.map((u) => [u.username, u.userId]));
  const missing = wanted.filter((u) => !byName.has(u));
  if (missing.length > 0)
    throw new Error(`unknown user${missing.length > 1 ? "s" : ""}: ${missing.map(at).join(", ")}`);
  return wanted.map((u) => byName.get(u)!);
}

/** Usernames for user ids, looked up in batches and remembered. */
export class Names {
  private readonly known = new Map<string, string>();

  constructor(private readonly client: SwitchboardClient) {
    this.known.set(client.userId, client.username);
  }

  async load(userIds: readonly string[]): Promise<void> {
    const missing = [...new Set(userIds)].filter((id) => id !== "" && !this.known.has(id));
    for (let i = 0; i < missing.length; i += 256) {
      const users = await this.client.lookupUsers({ userIds: missing.slice(i, i + 256) });
      for (const u of users) this.known.set(u.userId, u.username);
    }
  }

  label(userId: string): string {
    // The server hands out names and ids: shown on one line, whatever they hold.
    const name = this.known.get(userId);
    return printable(name === undefined ? userId : `@${name}`);
  }
}

/** Labels conversations as people know them: "@bob" for direct ones, the title for groups. */
export class ConversationLabels {
  private readonly known = new Map<string, Conversation>();

  constructor(
    private readonly client: SwitchboardClient,
    private readonly names: Names,
  ) {}

  async load(conversationId: string): Promise<void> {
    if (this.known.has(conversationId)) return;
    try {
      const { conversation } = await this.client.getConversation(conversationId);
      this.known.set(conversationId, conversation);
      if (conversation.peerUserId !== "") await this.names.load([conversation.peerUserId]);
    } catch {
      // Removed from the group meanwhile, or the server is away: the id is label enough.
    }
  }

  label(conversationId: string): string {
    const c = this.known.get(conversationId);
    if (c === undefined) return conversationId;
    return c.kind === ConversationKind.GROUP ? printable(c.title) : this.names.label(c.peerUserId);
  }

  /** How commands name the conversation: the peer's username for a direct one, else its id. */
  target(conversationId: string): string {
    const c = this.known.get(conversationId);
    const peer = c?.kind === ConversationKind.DIRECT ? this.names.label(c.peerUserId) : "";
    return peer.startsWith("@") ? peer.slice(1) : conversationId;
  }
}
