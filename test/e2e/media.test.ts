import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { Code, createClient } from "@connectrpc/connect";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { serverFixture } from "../helpers/fixture.js";

describe("attachments through a running server (local object store, real HTTP)", () => {
  const fx = serverFixture();

  it("uploads ciphertext with a presigned URL, lets members download it and nobody else", async () => {
    const alice = fx.track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = fx.track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const eve = fx.track(await TestDevice.register(fx.server.url, uniqueName("eve")));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;
    const aliceMedia = createClient(MediaService, alice.transport);
    const bobMedia = createClient(MediaService, bob.transport);
    const eveMedia = createClient(MediaService, eve.transport);

    const bytes = randomBytes(50_000);
    const upload = await aliceMedia.createUpload({ conversationId: id, lengthBytes: BigInt(bytes.length) });
    const put = await fetch(upload.uploadUrl, { method: "PUT", body: bytes });
    assert.equal(put.status, 200, await put.text());
    await aliceMedia.claimUpload({ objectId: upload.objectId, conversationId: id });

    const download = await bobMedia.createDownload({ objectId: upload.objectId, conversationId: id });
    assert.equal(download.lengthBytes, BigInt(bytes.length));
    const got = Buffer.from(await (await fetch(download.downloadUrl)).arrayBuffer());
    assert.ok(got.equals(bytes), "the same bytes come back");

    await rejectsWith(
      eveMedia.createDownload({ objectId: upload.objectId, conversationId: id }),
      Code.PermissionDenied,
    );
    // A URL is good for its own object only: the signature covers the id.
    const forged = download.downloadUrl.replace(upload.objectId, `m_${"0".repeat(26)}`);
    assert.notEqual((await fetch(forged)).status, 200);
  });

  it("refuses an upload longer than declared and keeps nothing", async () => {
    const alice = fx.track(await TestDevice.register(fx.server.url, uniqueName("alice")));
    const bob = fx.track(await TestDevice.register(fx.server.url, uniqueName("bob")));
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;
    const media = createClient(MediaService, alice.transport);
    const upload = await media.createUpload({ conversationId: id, lengthBytes: 10n });
    const put = await fetch(upload.uploadUrl, { method: "PUT", body: randomBytes(11) });
    assert.ok(put.status >= 400, `status ${put.status}`);
    // Nothing was kept, so there is nothing to download.
    await rejectsWith(
      createClient(MediaService, bob.transport).createDownload({
        objectId: upload.objectId,
        conversationId: id,
      }),
      Code.FailedPrecondition,
      /has not been uploaded yet/,
    );
  });
});
