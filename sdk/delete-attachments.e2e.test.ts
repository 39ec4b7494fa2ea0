import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { Inbox } from "../test/helpers/inbox.js";
import { TestDevices } from "../test/helpers/sdk-devices.js";
import { removeDir, type ServerProcess, startServerProcess } from "../test/helpers/server.js";

/**
 * deleteForEveryone with the message's attachments, SDK clients against a server process: the
 * delete lands in the log and the named attachments leave the media store; bob, who could fetch
 * the file a moment before, gets NOT_FOUND.
 */
describe("SDK: delete for everyone takes the attachments it names", () => {
  let base: string;
  let server: ServerProcess | undefined;
  let devices: TestDevices;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "sb-delete-attachments-"));
    server = await startServerProcess({ dataDir: join(base, "server") });
    const url = server.url;
    devices = new TestDevices(base, () => url);
  });

  after(async () => {
    await devices?.close();
    const code = await server?.stop();
    await removeDir(base);
    assert.equal(code, 0, `server exited with ${code}:\n${server?.logs.slice(-20).join("\n")}`);
  });

  it("the sender deletes its message and its file; the file is gone for the peer", async () => {
    const alice = await devices.register("dfa");
    const bob = await devices.register("dfb");
    const bobBox = new Inbox("bob", bob);
    for (const c of [alice, bob]) await c.connect();
    const id = (await alice.openDirect(bob.userId)).conversationId;
    const data = randomBytes(5_000);
    const sent = await alice.sendAttachment(id, { data, fileName: "a.bin" }, { caption: "soon gone" });
    const received = await bobBox.entry(id, sent.seq);
    const pointer = received.attachments[0]!;
    assert.ok(Buffer.from(await bob.downloadAttachment(id, pointer)).equals(data));

    const deleted = await alice.deleteForEveryone(id, sent.seq, { attachments: [sent.attachment] });
    assert.ok(deleted.seq > sent.seq);
    await assert.rejects(bob.downloadAttachment(id, pointer), (err: unknown) => {
      assert.equal(ConnectError.from(err).code, Code.NotFound, String(err));
      return true;
    });
    const tombstone = await bobBox.entry(id, deleted.seq);
    assert.equal(tombstone.kind, "delete");
  });
});
