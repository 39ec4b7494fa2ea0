import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { Inbox } from "../../test/helpers/inbox.js";
import { SdkServerSuite, TEST_TUNING } from "../../test/helpers/sdk-devices.js";
import { SwitchboardClient } from "../client.js";
import { MemoryStorage } from "./memory.js";

// The client end to end on the memory engine, against a server process: encryption works (keys, sessions, kept plaintexts all in the engine), and a
// client reopened on the same storage resumes from its cursors without seeing anything twice.

describe("SwitchboardClient on MemoryStorage", () => {
  const suite = new SdkServerSuite("sb-memory-storage-");
  const clients: SwitchboardClient[] = [];
  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
  });

  async function register(name: string, storage: MemoryStorage): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.register({
      serverUrl: suite.server.url,
      storage,
      username: `${name}_${clients.length}`,
      ...TEST_TUNING,
    });
    clients.push(client);
    return client;
  }

  it("two devices exchange encrypted messages, and one reopened on its storage resumes where it was", async () => {
    const aliceStore = new MemoryStorage("memory:alice");
    const bobStore = new MemoryStorage("memory:bob");
    const alice = await register("alice", aliceStore);
    const bob = await register("bob", bobStore);
    assert.ok(alice.encrypted && bob.encrypted, "encrypted by default");
    assert.equal(bob.profileDir, "memory:bob");
    const a = new Inbox("alice", alice);
    const b = new Inbox("bob", bob);
    await Promise.all([alice.connect(), bob.connect()]);

    const { conversationId } = await alice.openDirect(bob.userId);
    await alice.send(conversationId, "hello bob");
    await b.has("hello bob");
    await bob.send(conversationId, "hello alice");
    await a.has("hello alice");
    assert.ok(b.byText("hello bob")?.encrypted && a.byText("hello alice")?.encrypted);
    assert.ok((await bobStore.list("signal/sessions/")).length > 0, "bob's sessions are in his storage");
    assert.ok((await bobStore.list("e2ee/plaintexts/")).length > 0, "and the plaintexts he decrypted");

    // Bob goes away; alice writes twice; bob comes back on the same storage.
    await bob.close();
    await alice.send(conversationId, "while you were away 1");
    await alice.send(conversationId, "while you were away 2");
    await assert.rejects(
      SwitchboardClient.open({ storage: bobStore, profileDir: "/nowhere" }),
      /profileDir or storage, not both/,
    );
    const again = await SwitchboardClient.open({ storage: bobStore, ...TEST_TUNING });
    clients.push(again);
    assert.ok(again.encrypted, "the storage remembers the profile is encrypted");
    const b2 = new Inbox("bob again", again);
    await again.connect();
    await b2.has("while you were away 1", "while you were away 2");
    assert.deepEqual(b2.texts(), ["while you were away 1", "while you were away 2"], "nothing twice");
    assert.deepEqual(b2.failures, []);
  });
});
