import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { isStoreError } from "../errors.js";
import type { AccountStore, ReportRecord, StoreEngine } from "../types.js";

/**
 * The conformance suite of the accounts store's blocks and reports (SafetyStore), for every
 * engine. Every test works on ids of its own, so `open` may return a shared store.
 */
export function runSafetyStoreConformance(open: () => Promise<StoreEngine>): void {
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
  const id = (prefix: string) => `${prefix}_${randomUUID().replaceAll("-", "").slice(0, 26)}`;

  describe("SafetyStore conformance", () => {
    test("a block is listed, idempotent, and removed by unblock", async (store) => {
      const [a, b, c] = [id("u"), id("u"), id("u")];
      assert.deepEqual(await store.listBlocked(a), []);
      assert.equal(await store.block(a, b, 1000, 10), true);
      assert.equal(await store.block(a, b, 2000, 10), false, "already blocked: nothing written");
      assert.equal(await store.block(a, c, 3000, 10), true);
      const listed = (await store.listBlocked(a)).sort((x, y) => x.blockedAtMs - y.blockedAtMs);
      assert.deepEqual(listed, [
        { blockedUserId: b, blockedAtMs: 1000 },
        { blockedUserId: c, blockedAtMs: 3000 },
      ]);
      assert.deepEqual(await store.listBlocked(b), [], "a block is the blocker's only");
      assert.equal(await store.unblock(a, b), true);
      assert.equal(await store.unblock(a, b), false);
      assert.deepEqual(await store.listBlocked(a), [{ blockedUserId: c, blockedAtMs: 3000 }]);
    });

    test("deleting a user removes their own blocks, not others' blocks of them", async (store) => {
      const u = {
        userId: id("u"),
        username: `user_${randomUUID().slice(0, 8)}`,
        displayName: "",
        createdAtMs: 1,
      };
      const d = {
        deviceId: id("dv"),
        userId: u.userId,
        name: "phone",
        secretHash: "ab".repeat(32),
        createdAtMs: 1,
        revokedAtMs: 0,
      };
      await store.createUser(u, d);
      const [other, blocker] = [id("u"), id("u")];
      await store.block(u.userId, other, 1, 10);
      await store.block(blocker, u.userId, 2, 10);
      assert.equal(await store.deleteUser?.(u.userId), true);
      assert.deepEqual(await store.listBlocked(u.userId), []);
      assert.deepEqual(await store.listBlocked(blocker), [{ blockedUserId: u.userId, blockedAtMs: 2 }]);
    });

    test("blocks past the cap are refused with limit", async (store) => {
      const a = id("u");
      await store.block(a, id("u"), 1, 2);
      await store.block(a, id("u"), 2, 2);
      await assert.rejects(store.block(a, id("u"), 3, 2), (err) => isStoreError(err, "limit"));
      assert.equal((await store.listBlocked(a)).length, 2);
    });

    test("reports are stored whole and listed newest first, per reported user and for everyone", async (store) => {
      const reported = id("u");
      const other = id("u");
      const now = Date.now();
      // Ids sort by time, as the accounts service makes them.
      const report = (n: number, reportedUserId: string): ReportRecord => ({
        reportId: `rp_${(now + n).toString(36).padStart(9, "0")}${randomUUID().slice(0, 8)}`,
        reporterUserId: id("u"),
        reportedUserId,
        createdAtMs: now + n,
        reason: `spam ${n}`,
        conversationId: n === 1 ? "d_x" : "",
        targetSeq: n === 1 ? 7 : 0,
        messages:
          n === 1
            ? [
                {
                  conversationId: "d_x",
                  seq: 7,
                  senderUserId: reportedUserId,
                  sentAtMs: now,
                  text: "buy ✓ now",
                },
              ]
            : [],
      });
      const r1 = report(1, reported);
      const r2 = report(2, other);
      const r3 = report(3, reported);
      for (const r of [r1, r2, r3]) await store.putReport(r);
      const mine = await store.listReports(reported, 10);
      assert.deepEqual(mine, { reports: [r3, r1], truncated: false });
      assert.deepEqual(await store.listReports(reported, 1), { reports: [r3], truncated: true });
      const all = await store.listReports(undefined, 500);
      const ours = all.reports.filter((r) => [r1, r2, r3].some((x) => x.reportId === r.reportId));
      assert.deepEqual(ours, [r3, r2, r1]);
      assert.deepEqual(await store.listReports(id("u"), 10), { reports: [], truncated: false });
    });
  });
}
