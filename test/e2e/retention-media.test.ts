import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { outgoingText, type TestDevice } from "../helpers/device.js";
import { engineServerSuite } from "../helpers/engine-server.js";
import { skipWithoutMinio } from "../helpers/minio.js";
import { SCYLLA_SKIP } from "../helpers/scylla.js";

const MINIO_SKIP = skipWithoutMinio();

/** Each store engine with the embedded media store, and LMDB with MinIO's. */
const setups = [
  { store: "lmdb", media: "local", skip: false },
  { store: "scylla", media: "local", skip: SCYLLA_SKIP },
  { store: "lmdb", media: "minio", skip: MINIO_SKIP },
] as const;

/** Two servers per setup: the server-wide retention (seconds), or retention after delivery. */
const modes = [
  { name: "the server-wide retention", env: { SWITCHBOARD_RETENTION_SECONDS: "3" } },
  {
    name: "retention after delivery",
    env: { SWITCHBOARD_RETENTION_SECONDS: "0", SWITCHBOARD_RETENTION_AFTER_DELIVERY_SECONDS: "1" },
  },
] as const;

/**
 * Attachments go with the entries retention deletes, against a server process, on each store
 * engine and each media engine. The server cannot see which message carries which attachment;
 * it deletes an attachment once its conversation's stored log begins after the attachment's claim
 * (docs/encryption.md), so a message's attachment goes no earlier than the message itself.
 */
for (const setup of setups) {
  for (const mode of modes) {
    describe(`attachments go with ${mode.name} (${setup.store}, ${setup.media} media)`, {
      skip: setup.skip,
    }, () => {
      const suite = engineServerSuite(setup.store, "retmedia", {
        env: {
          ...mode.env,
          SWITCHBOARD_EXPIRY_SWEEP_MS: "1000",
          SWITCHBOARD_MEDIA_SWEEP_INTERVAL_SECONDS: "1",
          // One process: one clock.
          SWITCHBOARD_RETENTION_CLOCK_MARGIN_MS: "0",
        },
        minioBucket: setup.media === "minio" ? "retention" : undefined,
      });

      /** Uploads an attachment, sends its message, then claims it, as the SDK does. */
      const attach = async (sender: TestDevice, conversationId: string, clientMsgId: string) => {
        const media = createClient(MediaService, sender.transport);
        const bytes = randomBytes(48);
        const up = await media.createUpload({ conversationId, lengthBytes: BigInt(bytes.length) });
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: bytes })).status, 200);
        const sent = await sender.gateway.send({
          entry: outgoingText(conversationId, clientMsgId, "a file"),
        });
        await media.claimUpload({ objectId: up.objectId, conversationId });
        return { objectId: up.objectId, seq: sent.seq };
      };

      const downloadable = (d: TestDevice, conversationId: string, objectId: string) =>
        createClient(MediaService, d.transport)
          .createDownload({ objectId, conversationId })
          .then(
            // The object may go between the URL and the fetch (bytes before the record): 404.
            async (r) => {
              const { status } = await fetch(r.downloadUrl);
              assert.ok(status === 200 || status === 404, `download answered ${status}`);
              return status === 200;
            },
            (err: unknown) => {
              assert.equal(ConnectError.from(err).code, Code.NotFound, String(err));
              return false;
            },
          );

      it("an attachment goes once its message is deleted, never before; one whose message stays stays", async () => {
        const [a, b, c] = [await suite.user("xa"), await suite.user("xb"), await suite.user("xc")];
        const withB = (await a.conversations.openDirect({ peerUserId: b.userId })).conversation!
          .conversationId;
        const withC = (await a.conversations.openDirect({ peerUserId: c.userId })).conversation!
          .conversationId;
        const kept = mode.name === "retention after delivery" ? await attach(a, withC, "k1") : undefined;
        const gone = await attach(a, withB, "g1");
        assert.equal(await downloadable(b, withB, gone.objectId), true, "served while its message lives");
        // Everyone's devices acknowledge the message to b (c never connects: a's message to c waits).
        for (const d of [a, b]) {
          d.connect();
          await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
          d.write({ case: "ack", value: { cursors: [{ conversationId: withB, seq: gone.seq }] } as never });
        }
        const deadline = Date.now() + 30_000;
        while (await downloadable(b, withB, gone.objectId)) {
          assert.ok(
            Date.now() < deadline,
            `the attachment outlived its message:\n${suite.server.logs.slice(-15).join("\n")}`,
          );
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
        // Gone, so its message was already gone from the store: read now, it is expired.
        const history = await b.conversations.getHistory({ conversationId: withB });
        assert.equal(history.entries.find((e) => e.seq === gone.seq)?.expired, true);
        if (kept !== undefined) {
          // The sweep that deleted b's attachment walked c's conversation too; its message is
          // still stored (c has not received it), so its attachment stays.
          assert.equal(await downloadable(a, withC, kept.objectId), true);
          const withCHistory = await a.conversations.getHistory({ conversationId: withC });
          assert.equal(withCHistory.entries.find((e) => e.seq === kept.seq)?.body.case, "message");
        }
      });
    });
  }
}
