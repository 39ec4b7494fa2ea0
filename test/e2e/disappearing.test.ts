import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { type Entry, OutgoingEntrySchema, ReactionBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { outgoingText } from "../helpers/device.js";
import { engineServerSuite } from "../helpers/engine-server.js";
import { rejectsWith } from "../helpers/expect.js";
import { SCYLLA_SKIP, storedSeqsOnceGone } from "../helpers/scylla.js";
import { loggedLine } from "../helpers/server.js";

/** A timer short enough to wait out, offered besides the default ones (SWITCHBOARD_DISAPPEARING_TIMERS). */
const SHORT = 2;

/** Waits (bounded) until the server's clock, as the entry's own times say, is past its expiry. */
async function pastExpiry(entry: Entry): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() <= Number(entry.expiresAtMs) + 50) {
    if (Date.now() > deadline) throw new Error("the entry's expiry never came");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Disappearing messages against a server process, on each store engine: the timer is a log
 * entry, entries sent after it carry their expiry and are served as expired once past it (their
 * seqs stay in the numbering), and the store deletes them.
 */
for (const engine of ["lmdb", "scylla"] as const) {
  describe(`disappearing messages (${engine})`, { skip: engine === "scylla" && SCYLLA_SKIP }, () => {
    const suite = engineServerSuite(engine, "disappearing", {
      env: {
        SWITCHBOARD_DISAPPEARING_TIMERS: `${SHORT},86400,604800,7776000`,
        SWITCHBOARD_EXPIRY_SWEEP_MS: "1000",
        SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS: "1",
      },
    });

    it("a member sets the timer; later messages expire, are served as expired and leave the store", async () => {
      const [a, b] = [await suite.user("da"), await suite.user("db")];
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const id = conversation!.conversationId;
      const before = await a.gateway.send({ entry: outgoingText(id, "m0", "kept forever") });

      await rejectsWith(
        a.conversations.setDisappearingTimer({ conversationId: id, durationSeconds: 3600 }),
        Code.InvalidArgument,
        /duration_seconds/,
      );
      await rejectsWith(
        a.conversations.setDisappearingTimer({
          conversationId: id,
          durationSeconds: SHORT,
          adminsOnly: true,
        }),
        Code.InvalidArgument,
        /admins_only/,
      );
      const outsider = await suite.user("dx");
      await rejectsWith(
        outsider.conversations.setDisappearingTimer({ conversationId: id, durationSeconds: SHORT }),
        Code.PermissionDenied,
      );
      // Either member of a direct conversation may set it; the timer is an entry of the log.
      const { entry: timer } = await b.conversations.setDisappearingTimer({
        conversationId: id,
        durationSeconds: SHORT,
      });
      assert.equal(timer?.body.case, "disappearing");
      assert.equal(timer?.body.case === "disappearing" && timer.body.value.durationSeconds, SHORT);
      assert.equal(timer?.expiresAtMs, 0n, "the timer entry itself does not disappear");
      const again = await a.conversations.setDisappearingTimer({
        conversationId: id,
        durationSeconds: SHORT,
      });
      assert.equal(again.entry, undefined, "setting the timer it has writes nothing");

      const sent = await a.gateway.send({ entry: outgoingText(id, "m1", "gone soon") });
      const page = await b.conversations.getHistory({ conversationId: id });
      const message = page.entries.find((e) => e.seq === sent.seq)!;
      assert.equal(message.body.case, "message");
      assert.equal(message.expiresAtMs, sent.serverTimeMs + BigInt(SHORT * 1000));
      assert.equal(page.entries.find((e) => e.seq === before.seq)?.expiresAtMs, 0n);

      // A device that connects after the expiry is served the seq as expired in its backlog: no gap.
      await pastExpiry(message);
      b.connect();
      await b.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
      const backlog = b.frames.flatMap((f) => (f.frame.case === "message" ? f.frame.value.entries : []));
      const stub = backlog.find((e) => e.seq === sent.seq);
      assert.ok(stub !== undefined, "the expired seq is in the backlog");
      assert.equal(stub.expired, true);
      assert.equal(stub.body.case, undefined, "nothing of the content is served");
      assert.equal(stub.senderUserId, "", "nor who sent it");
      assert.deepEqual(
        backlog.map((e) => Number(e.seq)),
        Array.from({ length: Number(sent.seq) }, (_, i) => i + 1),
        "every seq is there, in order",
      );
      const history = await a.conversations.getHistory({ conversationId: id });
      assert.equal(history.entries.find((e) => e.seq === sent.seq)?.expired, true);
      assert.equal(history.entries.find((e) => e.seq === before.seq)?.body.case, "message");

      // An expired message cannot be reacted to, edited or deleted: it is not there.
      await rejectsWith(
        b.gateway.send({
          entry: create(OutgoingEntrySchema, {
            clientMsgId: "r1",
            conversationId: id,
            body: {
              case: "reaction",
              value: create(ReactionBodySchema, { targetSeq: sent.seq, payload: new Uint8Array([1]) }),
            },
          }),
        }),
        Code.NotFound,
      );

      // The store frees it: LMDB's sweep deletes it, ScyllaDB's TTL removed the row.
      if (engine === "lmdb") {
        await loggedLine(
          suite.server,
          (l) => l.includes("deleted expired entries"),
          "the expiry sweep",
          15_000,
        );
      } else {
        const stored = await storedSeqsOnceGone(suite.keyspace.options, id, Number(sent.seq));
        assert.ok(!stored.includes(Number(sent.seq)), `seq ${sent.seq} still stored: ${stored}`);
        assert.ok(stored.includes(Number(before.seq)));
      }

      // Off again: what is sent now stays.
      await a.conversations.setDisappearingTimer({ conversationId: id, durationSeconds: 0 });
      const kept = await a.gateway.send({ entry: outgoingText(id, "m2", "stays") });
      const latest = await b.conversations.getHistory({ conversationId: id, afterSeq: kept.seq - 1n });
      assert.equal(latest.entries[0]?.expiresAtMs, 0n);
    });

    it("an attachment claimed under the timer is deleted from the media store when the timer has run", async () => {
      const [a, b] = [await suite.user("ma"), await suite.user("mb")];
      const { conversation } = await a.conversations.openDirect({ peerUserId: b.userId });
      const id = conversation!.conversationId;
      await a.conversations.setDisappearingTimer({ conversationId: id, durationSeconds: SHORT });
      const media = createClient(MediaService, a.transport);
      const bytes = randomBytes(64);
      const up = await media.createUpload({ conversationId: id, lengthBytes: BigInt(bytes.length) });
      assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: bytes })).status, 200);
      // The message that carries it is sent, then the object is claimed (as the SDK does).
      const sent = await a.gateway.send({ entry: outgoingText(id, "f1", "a file") });
      const claimedAt = Date.now();
      await media.claimUpload({ objectId: up.objectId, conversationId: id });
      const download = createClient(MediaService, b.transport);
      const url = (await download.createDownload({ objectId: up.objectId, conversationId: id })).downloadUrl;
      assert.equal((await fetch(url)).status, 200, "the attachment is served while its message lives");
      const deadline = Date.now() + 20_000;
      for (;;) {
        const gone = await download.createDownload({ objectId: up.objectId, conversationId: id }).then(
          () => false,
          (err: unknown) => ConnectError.from(err).code === Code.NotFound,
        );
        if (gone) break;
        assert.ok(Date.now() < deadline, "the attachment outlived its message");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.ok(Date.now() >= claimedAt + SHORT * 1000, "deleted only once the timer had run");
      assert.equal((await fetch(url)).status, 404, "its bytes are gone, not only its record");
      const history = await b.conversations.getHistory({ conversationId: id, afterSeq: sent.seq - 1n });
      assert.equal(history.entries[0]?.expired, true);
    });

    it("in a group, an admin may make the timer admins-only; members are refused then", async () => {
      const [admin, member] = [await suite.user("ga"), await suite.user("gm")];
      const { conversation } = await admin.conversations.createGroup({
        title: "timers",
        memberUserIds: [member.userId],
      });
      const id = conversation!.conversationId;
      // Any member may set it while the group does not say otherwise...
      const { entry } = await member.conversations.setDisappearingTimer({
        conversationId: id,
        durationSeconds: 86_400,
      });
      assert.equal(entry?.body.case, "disappearing");
      // ...but only an admin may make it admins-only.
      await rejectsWith(
        member.conversations.setDisappearingTimer({
          conversationId: id,
          durationSeconds: 86_400,
          adminsOnly: true,
        }),
        Code.PermissionDenied,
        /admins/,
      );
      const locked = await admin.conversations.setDisappearingTimer({
        conversationId: id,
        durationSeconds: 604_800,
        adminsOnly: true,
      });
      assert.equal(locked.entry?.body.case === "disappearing" && locked.entry.body.value.adminsOnly, true);
      await rejectsWith(
        member.conversations.setDisappearingTimer({ conversationId: id, durationSeconds: 0 }),
        Code.PermissionDenied,
        /admins/,
      );
      const sent = await member.gateway.send({ entry: outgoingText(id, "g1", "a week") });
      assert.equal(
        (await admin.conversations.getHistory({ conversationId: id, afterSeq: sent.seq - 1n })).entries[0]
          ?.expiresAtMs,
        sent.serverTimeMs + 604_800_000n,
      );
    });
  });
}
