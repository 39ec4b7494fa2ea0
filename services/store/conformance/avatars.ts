import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { isStoreError } from "../errors.js";
import type { AccountStore, AvatarRecord, StoreEngine, UserRecord } from "../types.js";

/**
 * The conformance cases of AccountStore's avatars (getAvatar, swapAvatar), for every engine, in
 * the style of accounts.ts: each test works on users of its own.
 */
export function runAvatarConformance(open: () => Promise<StoreEngine>): void {
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

  describe("AccountStore conformance: avatars", () => {
    test("an avatar is absent until set; each swap returns the one it replaced; removal empties it", async (store) => {
      const u = await created(store);
      assert.equal(await store.getAvatar(u.userId), undefined);
      const first = avatar(1000);
      assert.equal(await store.swapAvatar(u.userId, first), undefined);
      assert.deepEqual(await store.getAvatar(u.userId), first);
      const second = avatar(2000);
      assert.deepEqual(await store.swapAvatar(u.userId, second), first);
      assert.deepEqual(await store.getAvatar(u.userId), second);
      assert.deepEqual(await store.swapAvatar(u.userId, undefined), second);
      assert.equal(await store.getAvatar(u.userId), undefined);
      assert.equal(await store.swapAvatar(u.userId, undefined), undefined);
      // Set again after a removal: nothing to hand back.
      const third = avatar(3000);
      assert.equal(await store.swapAvatar(u.userId, third), undefined);
      assert.deepEqual(await store.getAvatar(u.userId), third);
    });

    test("concurrent swaps hand every replaced avatar to exactly one caller", async (store) => {
      const u = await created(store);
      const initial = avatar(10);
      await store.swapAvatar(u.userId, initial);
      const next = Array.from({ length: 6 }, (_, i) => avatar(100 + i));
      const previous = await Promise.all(next.map((a) => store.swapAvatar(u.userId, a)));
      const final = await store.getAvatar(u.userId);
      assert.ok(final !== undefined);
      // Every avatar but the final one was replaced once: handed back exactly once.
      const handed = previous.map((p) => p?.objectId).sort();
      const expected = [initial, ...next]
        .map((a) => a.objectId)
        .filter((id) => id !== final.objectId)
        .sort();
      assert.deepEqual(handed, expected);
    });

    test("users' avatars are separate; an unknown user has none and cannot be given one", async (store) => {
      const a = await created(store);
      const b = await created(store);
      const mine = avatar(5);
      await store.swapAvatar(a.userId, mine);
      assert.equal(await store.getAvatar(b.userId), undefined);
      assert.deepEqual(await store.getAvatar(a.userId), mine);
      const ghost = id("u");
      assert.equal(await store.getAvatar(ghost), undefined);
      await assert.rejects(store.swapAvatar(ghost, avatar(6)), (err) => isStoreError(err, "not_found"));
      assert.equal(await store.getAvatar(ghost), undefined);
      assert.equal(await store.swapAvatar(ghost, undefined), undefined);
    });
  });
}

function id(prefix: string): string {
  return `${prefix}_${randomUUID().replaceAll("-", "").slice(0, 26)}`;
}

async function created(store: AccountStore): Promise<UserRecord> {
  const u: UserRecord = {
    userId: id("u"),
    username: `user_${randomUUID().replaceAll("-", "").slice(0, 20)}`,
    displayName: "Someone",
    createdAtMs: 1_700_000_000_000,
  };
  await store.createUser(u, {
    deviceId: id("dv"),
    userId: u.userId,
    name: "phone",
    secretHash: "ab".repeat(32),
    createdAtMs: 1_700_000_000_000,
    revokedAtMs: 0,
  });
  return u;
}

function avatar(lengthBytes: number): AvatarRecord {
  return { objectId: id("m"), lengthBytes, setAtMs: 1_700_000_000_000 + lengthBytes };
}
