import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { PrivacyAudience, UserSchema } from "../../gen/switchboard/v1/accounts_pb.js";
import { MemberSchema } from "../../gen/switchboard/v1/conversations_pb.js";
import { ReceiptFrameSchema, ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { PrivacyView } from "./privacy.js";

interface Settings {
  lastSeen: PrivacyAudience;
  readReceipts: boolean;
  profile?: PrivacyAudience;
}

const OPEN: Settings = {
  lastSeen: PrivacyAudience.EVERYONE,
  readReceipts: true,
  profile: PrivacyAudience.EVERYONE,
};

/** A directory answering GetUserPrivacy from a map (defaults: OPEN), counting calls; `fail` refuses. */
function directory(settings: Map<string, Settings>) {
  const state = { calls: 0, ids: 0, gate: undefined as Promise<void> | undefined, fail: false };
  const client = {
    getUserPrivacy: async ({ userIds }: { userIds: string[] }) => {
      state.calls++;
      state.ids += userIds.length;
      await state.gate;
      if (state.fail) throw new Error("directory down");
      return { users: userIds.map((userId) => ({ userId, settings: settings.get(userId) ?? OPEN })) };
    },
  } as unknown as Client<typeof DirectoryService>;
  return { state, client };
}

/** Whether deliver was called once the view decided (at once or after its reads). */
async function decided(run: (deliver: () => void) => void): Promise<boolean> {
  let delivered = false;
  run(() => {
    delivered = true;
  });
  // The reads are a few turns of the event loop here; the directory answers at once.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  return delivered;
}

describe("PrivacyView: last seen and read receipts as a gateway enforces them", () => {
  it("shows presence only when both settings admit the other; 'contacts' needs a direct conversation", async () => {
    const { client } = directory(
      new Map([
        ["u_hidden", { lastSeen: PrivacyAudience.NOBODY, readReceipts: true }],
        ["u_friends", { lastSeen: PrivacyAudience.CONTACTS, readReceipts: true }],
      ]),
    );
    const view = new PrivacyView(client);
    const sees = (owner: string, viewer: string, direct: boolean) =>
      decided((d) => view.presenceVisible(owner, viewer, direct, d));
    assert.equal(await sees("u_open", "u_w", false), true);
    assert.equal(await sees("u_hidden", "u_w", true), false);
    assert.equal(await sees("u_friends", "u_w", true), true);
    assert.equal(await sees("u_friends", "u_w", false), false);
    // Reciprocal: the hidden user sees no one, the friends-only user only direct contacts.
    assert.equal(await sees("u_open", "u_hidden", true), false);
    assert.equal(await sees("u_open", "u_friends", false), false);
    assert.equal(await sees("u_open", "u_friends", true), true);
    assert.equal(await sees("u_hidden", "u_hidden", false), true, "one's own presence");
  });

  it("passes delivered receipts, and read receipts only when reader and viewer both have them on", async () => {
    const { client } = directory(
      new Map([["u_quiet", { lastSeen: PrivacyAudience.EVERYONE, readReceipts: false }]]),
    );
    const view = new PrivacyView(client);
    const receipt = (userId: string, kind: ReceiptKind) =>
      create(ReceiptFrameSchema, { conversationId: "g_x", userId, kind, upToSeq: 3n });
    const sees = (r: ReturnType<typeof receipt>, viewer: string) =>
      decided((d) => view.receiptVisible(r, viewer, d));
    assert.equal(await sees(receipt("u_quiet", ReceiptKind.DELIVERED), "u_s"), true);
    assert.equal(await sees(receipt("u_quiet", ReceiptKind.READ), "u_s"), false);
    assert.equal(await sees(receipt("u_r", ReceiptKind.READ), "u_s"), true);
    assert.equal(await sees(receipt("u_r", ReceiptKind.READ), "u_quiet"), false, "reciprocal");
    assert.equal(await sees(receipt("u_quiet", ReceiptKind.READ), "u_quiet"), true, "one's own devices");
  });

  it("masks other members' read cursors as 'read nothing since joining', never one's own", async () => {
    const { client } = directory(
      new Map([["u_quiet", { lastSeen: PrivacyAudience.EVERYONE, readReceipts: false }]]),
    );
    const view = new PrivacyView(client);
    const members = () => [
      create(MemberSchema, { userId: "u_me", joinedSeq: 1n, deliveredUpTo: 9n, readUpTo: 9n }),
      create(MemberSchema, { userId: "u_quiet", joinedSeq: 4n, deliveredUpTo: 9n, readUpTo: 8n }),
      create(MemberSchema, { userId: "u_r", joinedSeq: 1n, deliveredUpTo: 9n, readUpTo: 7n }),
    ];
    const mine = members();
    await view.maskReadCursors("u_me", mine);
    assert.deepEqual(
      mine.map((m) => [m.userId, m.deliveredUpTo, m.readUpTo]),
      [
        ["u_me", 9n, 9n],
        ["u_quiet", 9n, 3n],
        ["u_r", 9n, 7n],
      ],
    );
    const theirs = members();
    await view.maskReadCursors("u_quiet", theirs);
    assert.deepEqual(
      theirs.map((m) => m.readUpTo),
      [0n, 8n, 0n],
    );
  });

  it("shows a display name only to whom the profile setting admits, else the username; not reciprocal", async () => {
    const { client } = directory(
      new Map([
        ["u_hidden", { ...OPEN, profile: PrivacyAudience.NOBODY }],
        ["u_friends", { ...OPEN, profile: PrivacyAudience.CONTACTS }],
        ["u_me", { ...OPEN, profile: PrivacyAudience.NOBODY }],
      ]),
    );
    const view = new PrivacyView(client);
    const users = () =>
      ["u_me", "u_open", "u_hidden", "u_friends", "u_stranger_friends"].map((userId) =>
        create(UserSchema, { userId, username: `${userId}_name`, displayName: `${userId} Display` }),
      );
    let asked: string[] = [];
    const directOf = async (ids: string[]) => {
      asked = ids;
      return ids.filter((id) => id === "u_friends");
    };
    const seen = users();
    await view.maskProfiles("u_me", seen, directOf);
    assert.deepEqual(
      seen.map((u) => u.displayName),
      ["u_me Display", "u_open Display", "u_hidden_name", "u_friends Display", "u_stranger_friends Display"],
    );
    assert.deepEqual(asked, ["u_friends"], "only users with 'contacts' need the conversations");
  });

  it("reads once, answers from the cache, reads again after a change, and never caches a read that raced one", async () => {
    const settings = new Map<string, Settings>();
    const { state, client } = directory(settings);
    const view = new PrivacyView(client);
    await view.of(["u_a", "u_b"]);
    await view.of(["u_a", "u_b"]);
    assert.equal(state.calls, 2, "one read per user, then the cache");
    settings.set("u_a", { lastSeen: PrivacyAudience.NOBODY, readReceipts: true });
    view.changed("u_a");
    assert.equal((await view.of(["u_a"])).get("u_a")?.lastSeen, "nobody");
    assert.equal(state.calls, 3);

    let open = () => {};
    state.gate = new Promise<void>((r) => (open = r));
    const racing = view.of(["u_c"]);
    view.changed("u_c");
    open();
    await racing;
    assert.equal(view.cached("u_c"), undefined);
  });

  it("reads a copy again once it is older than the ttl (a PrivacyChanged this gateway missed)", async () => {
    const settings = new Map<string, Settings>();
    const { state, client } = directory(settings);
    let now = 1_000_000;
    const view = new PrivacyView(client, { ttlMs: 60_000, now: () => now });
    await view.of(["u_a"]);
    settings.set("u_a", { ...OPEN, lastSeen: PrivacyAudience.NOBODY });
    now += 60_000;
    assert.equal((await view.of(["u_a"])).get("u_a")?.lastSeen, "everyone", "still fresh");
    now += 1;
    assert.equal((await view.of(["u_a"])).get("u_a")?.lastSeen, "nobody", "read again");
    assert.equal(state.calls, 2);
  });

  it("reads many users in calls of 1,024, and is bounded by users and bytes", async () => {
    const { state, client } = directory(new Map());
    const many = Array.from({ length: 2100 }, (_, i) => `u_${i}`);
    const view = new PrivacyView(client, { maxUsers: 1000 });
    await view.of(many);
    assert.equal(state.calls, 3);
    assert.equal(view.size.users, 1000, "the most recent 1,000");
    assert.ok(view.cached("u_2099") !== undefined && view.cached("u_0") === undefined);
    const small = new PrivacyView(client, { maxBytes: 1000 });
    await small.of(many.slice(0, 50));
    assert.ok(small.size.bytes <= 1000 && small.size.users > 0, JSON.stringify(small.size));
  });

  it("fails closed: a frame whose settings cannot be read is dropped, a masking call rejects", async () => {
    const { state, client } = directory(new Map());
    state.fail = true;
    const view = new PrivacyView(client);
    assert.equal(await decided((d) => view.presenceVisible("u_a", "u_b", true, d)), false);
    const read = create(ReceiptFrameSchema, { userId: "u_a", kind: ReceiptKind.READ, upToSeq: 1n });
    assert.equal(await decided((d) => view.receiptVisible(read, "u_b", d)), false);
    await assert.rejects(
      view.maskReadCursors("u_b", [create(MemberSchema, { userId: "u_a", joinedSeq: 1n, readUpTo: 1n })]),
      /directory down/,
    );
  });
});
