import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { isStoreError, type StoreErrorKind } from "../errors.js";
import type { AccountStore, DeviceRecord, InviteRecord, StoreEngine, UserRecord } from "../types.js";

/**
 * The conformance suite of AccountStore, for every engine. `open` returns an engine whose close()
 * is called at the end of each test; it may be a fresh store or a shared one, as every test works
 * on ids and usernames of its own.
 */
export function runAccountStoreConformance(open: () => Promise<StoreEngine>): void {
  const test = (name: string, fn: (store: AccountStore) => Promise<void>): void => {
    it(name, async () => {
      const engine = await open();
      try {
        await fn(engine.accounts);
      } finally {
        await engine.close();
      }
    });
  };

  describe("AccountStore conformance", () => {
    test("a created user is found by id and by username, with its first device", async (store) => {
      const u = user();
      const d = device(u.userId);
      await store.createUser(u, d);
      assert.deepEqual(await store.getUser(u.userId), u);
      assert.deepEqual(await store.getUserByUsername(u.username), u);
      assert.deepEqual(await store.getDevice(d.deviceId), d);
      assert.deepEqual(await store.listDevices(u.userId), [d]);
    });

    test("a push registration is set, replaced, and removed only if it is still the current one", async (store) => {
      const u = user();
      const d = device(u.userId);
      await store.createUser(u, d);
      const web = {
        id: "w1",
        target: { kind: "webpush" as const, endpoint: "https://push.example/1", p256dh: "k", auth: "a" },
      };
      const fcm = { id: "f1", target: { kind: "fcm" as const, token: "tok" } };
      assert.equal(await store.setPush(d.deviceId, web), true);
      assert.deepEqual((await store.getDevice(d.deviceId))?.push, web);
      assert.equal(await store.setPush(d.deviceId, fcm), true);
      // A "gone" for the old registration must not remove the new one.
      assert.equal(await store.setPush(d.deviceId, undefined, "w1"), false);
      assert.deepEqual((await store.getDevice(d.deviceId))?.push, fcm);
      assert.equal(await store.setPush(d.deviceId, undefined, "f1"), true);
      const after = await store.getDevice(d.deviceId);
      assert.equal(after?.push, undefined);
      assert.deepEqual(after, d, "the rest of the device is untouched");
      assert.equal(await store.setPush(id("dv"), fcm), false, "unknown device");
    });

    test("unknown users, usernames and devices read as undefined or empty", async (store) => {
      assert.equal(await store.getUser(id("u")), undefined);
      assert.equal(await store.getUserByUsername(username()), undefined);
      assert.equal(await store.getDevice(id("dv")), undefined);
      assert.deepEqual(await store.listDevices(id("u")), []);
    });

    test("a taken username is refused and nothing of the second registration is kept", async (store) => {
      const first = user();
      await store.createUser(first, device(first.userId));
      const second = user({ username: first.username });
      const secondDevice = device(second.userId);
      await rejectsWith(store.createUser(second, secondDevice), "already_exists");
      assert.equal(await store.getUser(second.userId), undefined);
      assert.equal(await store.getDevice(secondDevice.deviceId), undefined);
      assert.deepEqual(await store.getUserByUsername(first.username), first);
    });

    test("of concurrent registrations of one username, exactly one wins", async (store) => {
      const name = username();
      const attempts = Array.from({ length: 5 }, () => {
        const u = user({ username: name });
        return { user: u, device: device(u.userId) };
      });
      const results = await Promise.allSettled(attempts.map((a) => store.createUser(a.user, a.device)));
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      assert.equal(won.length, 1);
      for (const r of results) {
        if (r.status === "rejected") assert.ok(isStoreError(r.reason, "already_exists"), String(r.reason));
      }
      const winner = attempts[won[0]!]!;
      assert.deepEqual(await store.getUserByUsername(name), winner.user);
      for (const a of attempts) {
        if (a === winner) continue;
        assert.equal(await store.getUser(a.user.userId), undefined);
        assert.equal(await store.getDevice(a.device.deviceId), undefined);
      }
    });

    test("addDevice to an unknown user is refused with not_found", async (store) => {
      const d = device(id("u"));
      await rejectsWith(store.addDevice(d, 5), "not_found");
      assert.equal(await store.getDevice(d.deviceId), undefined);
    });

    test("addDevice enforces the active device limit; revoked devices do not count", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId, { createdAtMs: 1 }));
      const second = device(u.userId, { createdAtMs: 2 });
      await store.addDevice(second, 2);
      const third = device(u.userId, { createdAtMs: 3 });
      await rejectsWith(store.addDevice(third, 2), "limit");
      assert.equal(await store.getDevice(third.deviceId), undefined);
      await store.revokeDevice(second.deviceId, 10);
      await store.addDevice(third, 2);
      assert.equal((await store.listDevices(u.userId)).length, 3);
    });

    test("concurrent addDevice calls never exceed the limit", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId));
      const candidates = Array.from({ length: 6 }, (_, i) => device(u.userId, { createdAtMs: 100 + i }));
      const results = await Promise.allSettled(candidates.map((d) => store.addDevice(d, 3)));
      assert.equal(results.filter((r) => r.status === "fulfilled").length, 2);
      for (const r of results) {
        if (r.status === "rejected") assert.ok(isStoreError(r.reason, "limit"), String(r.reason));
      }
      assert.equal((await store.listDevices(u.userId)).filter((d) => d.revokedAtMs === 0).length, 3);
    });

    test("revokeDevice marks the device revoked, is idempotent and keeps it listed", async (store) => {
      const u = user();
      const d = device(u.userId);
      await store.createUser(u, d);
      const revoked = { ...d, revokedAtMs: 5_000 };
      assert.deepEqual(await store.revokeDevice(d.deviceId, 5_000), revoked);
      assert.deepEqual(await store.revokeDevice(d.deviceId, 9_000), revoked);
      assert.deepEqual(await store.getDevice(d.deviceId), revoked);
      assert.deepEqual(await store.listDevices(u.userId), [revoked]);
      assert.equal(await store.revokeDevice(id("dv"), 5_000), undefined);
    });

    test("listDevices lists a user's devices oldest first, and only theirs", async (store) => {
      const u = user();
      const other = user();
      const first = device(u.userId, { createdAtMs: 1_000 });
      await store.createUser(u, first);
      await store.createUser(other, device(other.userId, { createdAtMs: 1_500 }));
      const newest = device(u.userId, { createdAtMs: 3_000 });
      const middle = device(u.userId, { createdAtMs: 2_000 });
      await store.addDevice(newest, 10);
      await store.addDevice(middle, 10);
      await store.revokeDevice(middle.deviceId, 4_000);
      assert.deepEqual(await store.listDevices(u.userId), [first, { ...middle, revokedAtMs: 4_000 }, newest]);
    });

    test("a link code is taken once", async (store) => {
      const code = { codeHash: id("code"), userId: id("u"), expiresAtMs: 1_700_000_060_000 };
      await store.putLinkCode(code);
      assert.deepEqual(await store.takeLinkCode(code.codeHash), code);
      assert.equal(await store.takeLinkCode(code.codeHash), undefined);
      assert.equal(await store.takeLinkCode(id("code")), undefined);
    });

    test("privacy settings are unset until set, and each change keeps the other settings", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId));
      assert.deepEqual(await store.getPrivacy([u.userId]), new Map([[u.userId, {}]]));
      assert.deepEqual(await store.setPrivacy(u.userId, { groupAdd: "contacts" }), { groupAdd: "contacts" });
      assert.deepEqual(await store.setPrivacy(u.userId, { directOpen: "nobody" }), {
        groupAdd: "contacts",
        directOpen: "nobody",
      });
      assert.deepEqual(await store.setPrivacy(u.userId, { groupAdd: "everyone" }), {
        groupAdd: "everyone",
        directOpen: "nobody",
      });
      assert.deepEqual(await store.setPrivacy(u.userId, {}), { groupAdd: "everyone", directOpen: "nobody" });
      assert.deepEqual((await store.getPrivacy([u.userId])).get(u.userId), {
        groupAdd: "everyone",
        directOpen: "nobody",
      });
    });

    test("getPrivacy answers for every id asked, unknown users and users without settings as empty", async (store) => {
      const a = user();
      const b = user();
      await store.createUser(a, device(a.userId));
      await store.createUser(b, device(b.userId));
      await store.setPrivacy(a.userId, { directOpen: "contacts" });
      const unknown = id("u");
      const found = await store.getPrivacy([a.userId, b.userId, unknown, a.userId]);
      assert.deepEqual(
        found,
        new Map([
          [a.userId, { directOpen: "contacts" }],
          [b.userId, {}],
          [unknown, {}],
        ]),
      );
      assert.deepEqual(await store.getPrivacy([]), new Map());
    });

    test("setPrivacy of an unknown user is refused with not_found and stores nothing", async (store) => {
      const unknown = id("u");
      await rejectsWith(store.setPrivacy(unknown, { groupAdd: "nobody" }), "not_found");
      assert.deepEqual((await store.getPrivacy([unknown])).get(unknown), {});
    });

    test("concurrent changes of different privacy settings all survive", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId));
      await Promise.all([
        store.setPrivacy(u.userId, { groupAdd: "nobody" }),
        store.setPrivacy(u.userId, { directOpen: "contacts" }),
      ]);
      assert.deepEqual((await store.getPrivacy([u.userId])).get(u.userId), {
        groupAdd: "nobody",
        directOpen: "contacts",
      });
    });

    test("last seen and read receipts are kept beside the other settings; a switch off is kept as false", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId));
      await store.setPrivacy(u.userId, { groupAdd: "contacts" });
      assert.deepEqual(await store.setPrivacy(u.userId, { lastSeen: "nobody", readReceipts: false }), {
        groupAdd: "contacts",
        lastSeen: "nobody",
        readReceipts: false,
      });
      await Promise.all([
        store.setPrivacy(u.userId, { lastSeen: "contacts" }),
        store.setPrivacy(u.userId, { directOpen: "nobody" }),
      ]);
      assert.deepEqual((await store.getPrivacy([u.userId])).get(u.userId), {
        groupAdd: "contacts",
        directOpen: "nobody",
        lastSeen: "contacts",
        readReceipts: false,
      });
      assert.deepEqual(await store.setPrivacy(u.userId, { readReceipts: true }), {
        groupAdd: "contacts",
        directOpen: "nobody",
        lastSeen: "contacts",
        readReceipts: true,
      });
    });

    test("the profile setting is kept beside the others; a display name is replaced, never for an unknown user", async (store) => {
      const u = user();
      await store.createUser(u, device(u.userId));
      await store.setPrivacy(u.userId, { lastSeen: "nobody" });
      assert.deepEqual(await store.setPrivacy(u.userId, { profile: "contacts" }), {
        lastSeen: "nobody",
        profile: "contacts",
      });
      const renamed = await store.setDisplayName(u.userId, "Zoë ✨");
      assert.equal(renamed?.displayName, "Zoë ✨");
      assert.equal(renamed?.username, u.username);
      assert.equal((await store.getUser(u.userId))?.displayName, "Zoë ✨");
      assert.equal((await store.getUserByUsername(u.username))?.displayName, "Zoë ✨");
      const unknown = id("u");
      assert.equal(await store.setDisplayName(unknown, "ghost"), undefined);
      assert.equal(await store.getUser(unknown), undefined, "no row was made for an unknown user");
    });

    test("an invite is stored, read back, listed newest first and refused twice under one id", async (store) => {
      const older = invite({ createdAtMs: Date.now() + 10_000_000 });
      const newer = invite({ createdAtMs: older.createdAtMs + 1, note: "for ünïcode ✓ friends" });
      await store.putInvite(older);
      await store.putInvite(newer);
      assert.deepEqual(await store.getInvite(older.id), older);
      assert.deepEqual(await store.getInvite(newer.id), newer);
      assert.equal(await store.getInvite(id("iv")), undefined);
      await rejectsWith(store.putInvite({ ...older, tokenHash: "cd".repeat(32) }), "already_exists");
      assert.deepEqual(await store.getInvite(older.id), older, "the first one is kept");
      // The store may be shared with other tests: these two were made "in the future", so they
      // come first.
      const listed = await store.listInvites(2);
      assert.deepEqual(listed.invites, [newer, older]);
      const one = await store.listInvites(1);
      assert.deepEqual(one, { invites: [newer], truncated: true });
    });

    test("an invite gives exactly its uses, then is used up", async (store) => {
      const inv = invite({ usesLeft: 2, maxUses: 2 });
      await store.putInvite(inv);
      const now = inv.createdAtMs + 1;
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, now), {
        taken: { ...inv, usesLeft: 1 },
      });
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, now), {
        taken: { ...inv, usesLeft: 0 },
      });
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, now), { refused: "used_up" });
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 0);
    });

    test("an invite is refused with a wrong token, unknown, expired or revoked, and nothing is taken", async (store) => {
      const inv = invite({ usesLeft: 3, maxUses: 3 });
      await store.putInvite(inv);
      const now = inv.createdAtMs + 1;
      assert.deepEqual(await store.takeInviteUse(inv.id, "ef".repeat(32), now), { refused: "unknown" });
      assert.deepEqual(await store.takeInviteUse(id("iv"), inv.tokenHash, now), { refused: "unknown" });
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, inv.expiresAtMs), {
        refused: "expired",
      });
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 3);
      const revoked = { ...inv, revokedAtMs: now };
      assert.deepEqual(await store.revokeInvite(inv.id, now), revoked);
      assert.deepEqual(await store.revokeInvite(inv.id, now + 5), revoked, "the first time is kept");
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, now), { refused: "revoked" });
      assert.deepEqual(await store.getInvite(inv.id), revoked);
      assert.equal(await store.revokeInvite(id("iv"), now), undefined);
    });

    test("a use given back can be taken again, and never beyond the invite's uses", async (store) => {
      const inv = invite({ usesLeft: 1, maxUses: 1 });
      await store.putInvite(inv);
      const now = inv.createdAtMs + 1;
      assert.ok("taken" in (await store.takeInviteUse(inv.id, inv.tokenHash, now)));
      assert.deepEqual(await store.takeInviteUse(inv.id, inv.tokenHash, now), { refused: "used_up" });
      await store.returnInviteUse(inv.id);
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 1);
      await store.returnInviteUse(inv.id);
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 1, "not above maxUses");
      assert.ok("taken" in (await store.takeInviteUse(inv.id, inv.tokenHash, now)));
      await store.returnInviteUse(id("iv"));
      assert.equal(await store.getInvite(id("iv")), undefined, "an unknown invite stays unknown");
    });

    test("of concurrent takes of an invite, no more succeed than its uses", async (store) => {
      const inv = invite({ usesLeft: 3, maxUses: 3 });
      await store.putInvite(inv);
      const now = inv.createdAtMs + 1;
      const results = await Promise.all(
        Array.from({ length: 8 }, () => store.takeInviteUse(inv.id, inv.tokenHash, now)),
      );
      assert.equal(results.filter((r) => "taken" in r).length, 3);
      for (const r of results) if (!("taken" in r)) assert.deepEqual(r, { refused: "used_up" });
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 0);
    });

    test("concurrent takes and give-backs of an invite keep its count", async (store) => {
      const inv = invite({ usesLeft: 2, maxUses: 4 });
      await store.putInvite(inv);
      const now = inv.createdAtMs + 1;
      const takes = await Promise.all([
        store.takeInviteUse(inv.id, inv.tokenHash, now),
        store.returnInviteUse(inv.id),
        store.takeInviteUse(inv.id, inv.tokenHash, now),
        store.returnInviteUse(inv.id),
      ]);
      const taken = takes.filter((t) => t !== undefined && "taken" in t).length;
      assert.equal(taken, 2);
      assert.equal((await store.getInvite(inv.id))?.usesLeft, 2);
    });

    test("of concurrent takes of one link code, exactly one gets it", async (store) => {
      const code = { codeHash: id("code"), userId: id("u"), expiresAtMs: 1_700_000_060_000 };
      await store.putLinkCode(code);
      const taken = await Promise.all(Array.from({ length: 5 }, () => store.takeLinkCode(code.codeHash)));
      assert.deepEqual(
        taken.filter((t) => t !== undefined),
        [code],
      );
    });

    // Optional methods (setSuspended, deleteUser): an engine without them skips, saying so.
    const optional = (
      name: string,
      method: "setSuspended" | "deleteUser",
      fn: (store: AccountStore & Required<Pick<AccountStore, typeof method>>) => Promise<void>,
    ): void => {
      it(name, async (t) => {
        const engine = await open();
        try {
          if (engine.accounts[method] === undefined) {
            t.skip(`this engine has no AccountStore.${method}`);
            return;
          }
          await fn(engine.accounts as AccountStore & Required<Pick<AccountStore, typeof method>>);
        } finally {
          await engine.close();
        }
      });
    };

    optional(
      "a suspension is stored, keeps its first time, and is lifted with 0",
      "setSuspended",
      async (store) => {
        const u = user();
        await store.createUser(u, device(u.userId));
        assert.equal(
          (await store.setSuspended(u.userId, 1_700_000_000_000))?.suspendedAtMs,
          1_700_000_000_000,
        );
        assert.equal(
          (await store.setSuspended(u.userId, 1_700_000_500_000))?.suspendedAtMs,
          1_700_000_000_000,
        );
        assert.equal((await store.getUser(u.userId))?.suspendedAtMs, 1_700_000_000_000);
        assert.equal((await store.getUserByUsername(u.username))?.suspendedAtMs, 1_700_000_000_000);
        const lifted = await store.setSuspended(u.userId, 0);
        assert.ok(!lifted?.suspendedAtMs);
        assert.deepEqual(
          { ...(await store.getUser(u.userId)), suspendedAtMs: 0 },
          { ...u, suspendedAtMs: 0 },
        );
        assert.equal(await store.setSuspended(id("u"), 1_700_000_000_000), undefined, "unknown user");
      },
    );

    optional(
      "a deleted user leaves no user, username, device or setting behind",
      "deleteUser",
      async (store) => {
        const u = user();
        const first = device(u.userId);
        const second = device(u.userId, { createdAtMs: first.createdAtMs + 1 });
        await store.createUser(u, first);
        await store.addDevice(second, 8);
        await store.setPrivacy(u.userId, { groupAdd: "contacts" });
        const other = user();
        await store.createUser(other, device(other.userId));

        assert.equal(await store.deleteUser(u.userId), true);
        assert.equal(await store.getUser(u.userId), undefined);
        assert.equal(await store.getUserByUsername(u.username), undefined);
        assert.equal(await store.getDevice(first.deviceId), undefined);
        assert.equal(await store.getDevice(second.deviceId), undefined);
        assert.deepEqual(await store.listDevices(u.userId), []);
        assert.deepEqual((await store.getPrivacy([u.userId])).get(u.userId), {});
        assert.equal(await store.deleteUser(u.userId), false, "deleting twice finds nothing");
        assert.deepEqual(await store.getUser(other.userId), other, "another user is untouched");
        // The username is free again.
        const again = user({ username: u.username });
        await store.createUser(again, device(again.userId));
        assert.deepEqual(await store.getUserByUsername(u.username), again);
      },
    );
  });
}

function id(prefix: string): string {
  return `${prefix}_${randomUUID().replaceAll("-", "").slice(0, 26)}`;
}

function username(): string {
  return `user_${randomUUID().replaceAll("-", "").slice(0, 20)}`;
}

function user(fields: Partial<UserRecord> = {}): UserRecord {
  return {
    userId: id("u"),
    username: username(),
    displayName: "Someone",
    createdAtMs: 1_700_000_000_000,
    ...fields,
  };
}

function device(userId: string, fields: Partial<DeviceRecord> = {}): DeviceRecord {
  return {
    deviceId: id("dv"),
    userId,
    name: "phone",
    secretHash: "ab".repeat(32),
    createdAtMs: 1_700_000_000_000,
    revokedAtMs: 0,
    ...fields,
  };
}

function invite(fields: Partial<InviteRecord> = {}): InviteRecord {
  // Current times: an engine may expire rows by the wall clock (ScyllaDB's TTL keeps an invite 30
  // days past its expiry), so an invite that expired years ago could vanish mid-test.
  const createdAtMs = Date.now();
  return {
    id: id("iv"),
    tokenHash: randomUUID().replaceAll("-", "").repeat(2),
    usesLeft: 1,
    maxUses: 1,
    createdAtMs,
    expiresAtMs: createdAtMs + 86_400_000,
    revokedAtMs: 0,
    note: "",
    ...fields,
  };
}

async function rejectsWith(promise: Promise<unknown>, kind: StoreErrorKind): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isStoreError(err, kind), `expected StoreError "${kind}", got ${String(err)}`);
    return true;
  });
}
