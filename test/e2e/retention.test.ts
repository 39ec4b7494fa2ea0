import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { outgoingText } from "../helpers/device.js";
import { engineServerSuite } from "../helpers/engine-server.js";
import { SCYLLA_SKIP, storedSeqsOnceGone } from "../helpers/scylla.js";
import { loggedLine } from "../helpers/server.js";

/** The server-wide retention of this suite's servers, in seconds: short enough to wait out. */
const RETENTION = 3;

/**
 * Server-wide retention against a server process, on each store engine: entries older than
 * SWITCHBOARD_RETENTION_SECONDS, delivered or not, are served as expired (never a gap, so a device
 * that comes back later is told what it missed is gone) and deleted from the store.
 */
for (const engine of ["lmdb", "scylla"] as const) {
  describe(`retention (${engine})`, { skip: engine === "scylla" && SCYLLA_SKIP }, () => {
    const suite = engineServerSuite(engine, "retention", {
      env: {
        SWITCHBOARD_RETENTION_SECONDS: String(RETENTION),
        SWITCHBOARD_EXPIRY_SWEEP_MS: "1000",
      },
    });

    it("a device away for longer than the retention is told, entry by entry, that what it missed is gone", async () => {
      const [a, b] = [await suite.user("ra"), await suite.user("rb")];
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const id = conversation!.conversationId;
      const old = await a.gateway.send({ entry: outgoingText(id, "o1", "never delivered") });
      // b never connected: the message waited for it for the whole retention, and no longer.
      const deadline = Date.now() + 20_000;
      while (Date.now() <= Number(old.serverTimeMs) + RETENTION * 1000 + 50) {
        assert.ok(Date.now() < deadline);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const fresh = await a.gateway.send({ entry: outgoingText(id, "n1", "just sent") });
      b.connect();
      const caughtUp = await b.waitFor((f) => f.find((x) => x.frame.case === "caughtUp")?.frame, "caught up");
      // And in sum: two of the three backlog entries were gone.
      assert.equal(caughtUp.case === "caughtUp" && caughtUp.value.expiredEntries, 2n);
      assert.equal(caughtUp.case === "caughtUp" && caughtUp.value.entries, 3n);
      const backlog = b.frames.flatMap((f) => (f.frame.case === "message" ? f.frame.value.entries : []));
      assert.deepEqual(
        backlog.map((e) => [Number(e.seq), e.expired]),
        [
          [1, true],
          [Number(old.seq), true],
          [Number(fresh.seq), false],
        ],
        "the old entries come as expired, in their places, and the new one whole",
      );
      assert.equal(backlog.find((e) => e.seq === old.seq)?.body.case, undefined);
      assert.equal(backlog.find((e) => e.seq === fresh.seq)?.body.case, "message");

      // The store frees them: LMDB's sweep deletes them, ScyllaDB's TTL (the retention) removed them.
      if (engine === "lmdb") {
        await loggedLine(
          suite.server,
          (l) => l.includes("deleted entries past the retention"),
          "the sweep",
          15_000,
        );
      } else {
        const stored = await storedSeqsOnceGone(suite.keyspace.options, id, Number(old.seq));
        assert.ok(!stored.includes(Number(old.seq)), `seq ${old.seq} still stored: ${stored}`);
      }
      // Read again later, the old seqs are still there as expired: never a gap to ask for.
      const history = await a.conversations.getHistory({ conversationId: id, limit: 2 });
      assert.deepEqual(
        history.entries.map((e) => [Number(e.seq), e.expired]),
        [
          [1, true],
          [Number(old.seq), true],
        ],
      );
    });
  });
}

/**
 * SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS against a server process, on each store engine: an
 * entry every active device of every member has received goes once it is that old; one a member,
 * or one device of a member, has not received stays.
 */
for (const engine of ["lmdb", "scylla"] as const) {
  describe(`retention after delivery (${engine})`, { skip: engine === "scylla" && SCYLLA_SKIP }, () => {
    const suite = engineServerSuite(engine, "delivered", {
      env: {
        // No age limit: only delivery decides here.
        SWITCHBOARD_RETENTION_SECONDS: "0",
        SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS: "1",
        SWITCHBOARD_EXPIRY_SWEEP_MS: "1000",
      },
    });

    it("deletes what every member acknowledged once the window has passed, and keeps what one has not", async () => {
      const [a, b, c] = [await suite.user("wa"), await suite.user("wb"), await suite.user("wc")];
      const { conversation } = await a.conversations.createGroup({
        title: "acks",
        memberUserIds: [b.userId, c.userId],
      });
      const group = conversation!.conversationId;
      const direct = (await a.conversations.openDirect({ peerUserId: b.userId })).conversation!
        .conversationId;
      const toB = await a.gateway.send({ entry: outgoingText(direct, "d1", "b will have it") });
      const toGroup = await a.gateway.send({ entry: outgoingText(group, "g1", "c never connects") });
      // a and b acknowledge everything in the direct conversation; c never connects.
      for (const [d, id, seq] of [
        [a, direct, toB.seq],
        [b, direct, toB.seq],
        [a, group, toGroup.seq],
        [b, group, toGroup.seq],
      ] as const) {
        d.connect();
        await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
        d.write({ case: "ack", value: { cursors: [{ conversationId: id, seq }] } as never });
      }
      const deadline = Date.now() + 20_000;
      for (;;) {
        const history = await a.conversations.getHistory({ conversationId: direct });
        if (history.entries.find((e) => e.seq === toB.seq)?.expired === true) break;
        assert.ok(Date.now() < deadline, "the delivered entry was never deleted");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      // The group's entries wait for c: nothing of them went, even well past the window.
      await loggedLine(
        suite.server,
        (l) => l.includes("deleted delivered entries past the window"),
        "the sweep",
      );
      const group2 = await a.conversations.getHistory({ conversationId: group });
      assert.deepEqual(
        group2.entries.map((e) => e.expired),
        group2.entries.map(() => false),
      );
      assert.equal(group2.entries.find((e) => e.seq === toGroup.seq)?.body.case, "message");
    });

    it("waits for every active device of a member, not just one; a revoked device holds nothing back", async () => {
      const [a, b, c] = [await suite.user("va"), await suite.user("vb"), await suite.user("vc")];
      // b's second device is linked before the conversation exists: it must receive all of it.
      const b2 = await b.link("b2");
      suite.track(b2);
      const withB = (await a.conversations.openDirect({ peerUserId: b.userId })).conversation!.conversationId;
      const withC = (await a.conversations.openDirect({ peerUserId: c.userId })).conversation!.conversationId;
      const toB = await a.gateway.send({ entry: outgoingText(withB, "v1", "b2 is away") });
      const toC = await a.gateway.send({ entry: outgoingText(withC, "v2", "c has it") });
      // a, b's first device and c acknowledge; b2 never connects.
      for (const [d, id, seq] of [
        [a, withB, toB.seq],
        [b, withB, toB.seq],
        [a, withC, toC.seq],
        [c, withC, toC.seq],
      ] as const) {
        d.connect();
        await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
        d.write({ case: "ack", value: { cursors: [{ conversationId: id, seq }] } as never });
      }
      const expired = async (id: string, seq: bigint) =>
        (await a.conversations.getHistory({ conversationId: id })).entries.find((e) => e.seq === seq)
          ?.expired === true;
      const deadline = Date.now() + 20_000;
      while (!(await expired(withC, toC.seq))) {
        assert.ok(Date.now() < deadline, "the entry every device received was never deleted");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      // The sweep that deleted c's entry walked b's conversation too (one call walks both): every
      // member acknowledged there, yet b2 has not received it, so it stays, whole.
      const kept = await a.conversations.getHistory({ conversationId: withB });
      assert.equal(kept.entries.find((e) => e.seq === toB.seq)?.body.case, "message");
      const fromB2 = await b2.conversations.getHistory({ conversationId: withB });
      assert.equal(fromB2.entries.find((e) => e.seq === toB.seq)?.body.case, "message");

      // Revoked, b2 no longer holds it back: the next sweeps delete it.
      await b.accounts.revokeDevice({ deviceId: b2.deviceId });
      while (!(await expired(withB, toB.seq))) {
        assert.ok(Date.now() < deadline + 20_000, "the entry stayed after the device was revoked");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    });
  });
}
