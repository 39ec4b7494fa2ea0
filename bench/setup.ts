import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AccountService } from "../gen/switchboard/v1/accounts_pb.js";
import { ConversationService } from "../gen/switchboard/v1/conversations_pb.js";

/** One benchmark device: a user with one device and an access token. */
export interface BenchDevice {
  index: number;
  userId: string;
  deviceId: string;
  token: string;
}

/** A conversation and the indexes of its member devices. */
export interface BenchConversation {
  conversationId: string;
  members: number[];
}

/** Runs fn over items with at most `limit` calls in flight. */
async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!, i);
    }
  });
  await Promise.all(workers);
  return out;
}

/**
 * Registers `count` users (one device each) and builds their conversations: pairs for direct
 * mode, groups of `groupSize` for group mode. Unary calls share one HTTP/2 connection; the
 * streams later get one connection per device, like phones.
 */
export async function setUp(
  url: string,
  count: number,
  mode: "direct" | "group",
  groupSize: number,
): Promise<{ devices: BenchDevice[]; conversations: BenchConversation[] }> {
  const sessions = new Http2SessionManager(url);
  try {
    const transport = createGrpcTransport({ baseUrl: url, sessionManager: sessions });
    const accounts = createClient(AccountService, transport);
    const conversations = createClient(ConversationService, transport);
    const run = Math.random().toString(36).slice(2, 8);
    const devices = await pool(
      Array.from({ length: count }, (_, i) => i),
      32,
      async (index): Promise<BenchDevice> => {
        const r = await accounts.register({ username: `b${run}_${index}`, deviceName: "bench" });
        const t = await accounts.createToken({
          deviceId: r.credential!.deviceId,
          deviceSecret: r.credential!.deviceSecret,
        });
        return { index, userId: r.user!.userId, deviceId: r.credential!.deviceId, token: t.accessToken };
      },
    );
    const groups: number[][] = [];
    const size = mode === "direct" ? 2 : groupSize;
    for (let i = 0; i + size <= count; i += size) groups.push(Array.from({ length: size }, (_, k) => i + k));
    const convs = await pool(groups, 32, async (members): Promise<BenchConversation> => {
      const owner = devices[members[0]!]!;
      const headers = { authorization: `Bearer ${owner.token}` };
      if (mode === "direct") {
        const r = await conversations.openDirect({ peerUserId: devices[members[1]!]!.userId }, { headers });
        return { conversationId: r.conversation!.conversationId, members };
      }
      const r = await conversations.createGroup(
        { title: `bench ${members[0]}`, memberUserIds: members.slice(1).map((m) => devices[m]!.userId) },
        { headers },
      );
      return { conversationId: r.conversation!.conversationId, members };
    });
    return { devices, conversations: convs };
  } finally {
    sessions.abort();
  }
}
