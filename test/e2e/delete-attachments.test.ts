import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { outgoingText, type TestDevice } from "../helpers/device.js";
import { engineServerSuite } from "../helpers/engine-server.js";
import { rejectsWith } from "../helpers/expect.js";
import { skipWithoutMinio } from "../helpers/minio.js";
import { SCYLLA_SKIP } from "../helpers/scylla.js";

/** Each store engine with the embedded media store, and LMDB with MinIO's. */
const setups = [
  { store: "lmdb", media: "local", skip: false },
  { store: "scylla", media: "local", skip: SCYLLA_SKIP },
  { store: "lmdb", media: "minio", skip: skipWithoutMinio() },
] as const;

/**
 * Delete for everyone takes the message's attachments with it, against a server process: the
 * server cannot see which objects a message points at, so the deleting device names them
 * (MediaService.DeleteAttachments), and only its own uploads in that conversation go.
 */
for (const setup of setups) {
  describe(`attachments deleted for everyone (${setup.store}, ${setup.media} media)`, {
    skip: setup.skip,
  }, () => {
    const suite = engineServerSuite(setup.store, "delattach", {
      minioBucket: setup.media === "minio" ? "deletes" : undefined,
    });

    it("the sender's device deletes its message's attachments; nobody else's", async () => {
      const [a, b] = [await suite.user("da"), await suite.user("db")];
      const id = (await a.conversations.openDirect({ peerUserId: b.userId })).conversation!.conversationId;
      const upload = async (d: TestDevice) => {
        const media = createClient(MediaService, d.transport);
        const bytes = randomBytes(40);
        const up = await media.createUpload({ conversationId: id, lengthBytes: BigInt(bytes.length) });
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: bytes })).status, 200);
        return up.objectId;
      };
      const [first, second, bobs] = [await upload(a), await upload(a), await upload(b)];
      const sent = await a.gateway.send({ entry: outgoingText(id, "m1", "two files") });
      const aMedia = createClient(MediaService, a.transport);
      const bMedia = createClient(MediaService, b.transport);
      for (const objectId of [first, second]) await aMedia.claimUpload({ objectId, conversationId: id });
      const url = (await bMedia.createDownload({ objectId: first, conversationId: id })).downloadUrl;
      assert.equal((await fetch(url)).status, 200);

      // b cannot delete a's attachments, nor a b's: refused whole, nothing goes.
      await rejectsWith(
        bMedia.deleteAttachments({ conversationId: id, objectIds: [first] }),
        Code.PermissionDenied,
        /only its uploader/,
      );
      await rejectsWith(
        aMedia.deleteAttachments({ conversationId: id, objectIds: [first, bobs] }),
        Code.PermissionDenied,
      );
      assert.equal((await fetch(url)).status, 200);

      // a deletes the message for everyone, then names its attachments.
      await a.gateway.send({
        entry: create(OutgoingEntrySchema, {
          clientMsgId: "d1",
          conversationId: id,
          body: { case: "delete", value: { targetSeq: sent.seq } },
        }),
      });
      const r = await aMedia.deleteAttachments({ conversationId: id, objectIds: [first, second] });
      assert.deepEqual([...r.deletedObjectIds].sort(), [first, second].sort());
      await rejectsWith(bMedia.createDownload({ objectId: first, conversationId: id }), Code.NotFound);
      await rejectsWith(bMedia.createDownload({ objectId: second, conversationId: id }), Code.NotFound);
      assert.equal((await fetch(url)).status, 404, "the bytes are gone, not only the record");
      // b's own upload stays.
      const bUrl = (await bMedia.createDownload({ objectId: bobs, conversationId: id })).downloadUrl;
      assert.equal((await fetch(bUrl)).status, 200);
      const history = await b.conversations.getHistory({ conversationId: id });
      assert.equal(history.entries.find((e) => e.seq === sent.seq)?.redacted, true);
    });
  });
}
