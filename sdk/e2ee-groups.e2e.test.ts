import assert from "node:assert/strict";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { clone } from "@bufbuild/protobuf";
import { EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import { eventually, Inbox } from "../test/helpers/inbox.js";
import { TestDevices } from "../test/helpers/sdk-devices.js";
import { removeDir, type ServerProcess, startServerProcess } from "../test/helpers/server.js";
import type { SwitchboardClient } from "./client.js";
import { GroupDecryptError } from "./crypto/groups.js";
import { SENDER_KEY_PAYLOAD_TYPE } from "./e2ee.js";

const decoder = new TextDecoder();

describe("end-to-end encrypted groups with sender keys (SDK against a server process)", () => {
  let base: string;
  let server: ServerProcess;
  let devices: TestDevices;

  before(async () => {
    base = await mkdtemp(join(tmpdir(), "sb-e2ee-groups-"));
    // A small payload limit, so handing the sender key to a handful of new devices (a PreKey
    // message each, about 1.8 KB with its Kyber ciphertext) needs more than one send.
    server = await startServerProcess({
      dataDir: join(base, "server"),
      env: { SWITCHBOARD_MAX_PAYLOAD_BYTES: "4096" },
    });
    devices = new TestDevices(base, () => server.url);
  });

  after(async () => {
    await devices?.close();
    await server?.stop();
    await removeDir(base);
  });

  const register = (name: string) => devices.register(name);
  const link = (first: SwitchboardClient, name: string) => devices.link(first, name);

  it("members' devices read each other; keys are split across sends; a device linked later reads later messages; a removed member cannot decrypt what follows", async () => {
    const alice1 = await register("alice");
    const bob1 = await register("bob");
    const carol = await register("carol");
    const alice2 = await link(alice1, "alice2");
    const bob2 = await link(bob1, "bob2");
    const all = { a1: alice1, a2: alice2, b1: bob1, b2: bob2, c: carol };
    const inbox = Object.fromEntries(Object.entries(all).map(([k, c]) => [k, new Inbox(k, c)])) as Record<
      keyof typeof all,
      Inbox
    >;
    for (const c of Object.values(all)) await c.connect();

    const group = await alice1.createGroup("secret plans", [bob1.userId, carol.userId]);
    const id = group.conversationId;

    // alice1's first send hands her key to four devices: at 4,096 bytes per send that is keys-only
    // parts first, then the message; nobody's app sees the keys-only entries.
    await alice1.send(id, "group-secret-1 from alice1");
    await bob2.send(id, "group-secret-2 from bob2");
    await carol.send(id, "group-secret-3 from carol");
    await alice2.send(id, "group-secret-4 from alice2");
    const texts = ["group-secret-1 from alice1", "group-secret-2 from bob2", "group-secret-3 from carol"];
    texts.push("group-secret-4 from alice2");
    for (const box of Object.values(inbox)) await box.has(...texts);
    for (const box of Object.values(inbox)) {
      assert.deepEqual(box.failures, [], `${box.name} failed to decrypt`);
      assert.deepEqual(
        box.entries.filter((e) => e.keysOnly),
        [],
        `${box.name} was shown a keys-only entry`,
      );
    }

    // The server holds one sender-key ciphertext for a group message, not the text.
    const raw = inbox.b1.byText("group-secret-1 from alice1")?.raw;
    assert.ok(raw !== undefined && raw.body.case === "message");
    assert.equal(raw.body.value.payloadType, SENDER_KEY_PAYLOAD_TYPE);
    assert.ok(!Buffer.from(raw.body.value.payload).includes("group-secret-1"));
    // The history holds only keys-only entries between the start and alice1's message.
    const history = await bob1.getHistory(id, { limit: 100 });
    const shown = history.entries.filter((e) => e.kind === "message" && !e.keysOnly);
    assert.deepEqual(
      shown.map((e) => decoder.decode(e.payload)),
      texts,
    );

    // A tampered group ciphertext is refused with a clear error, never shown as a message.
    const tampered = clone(EntrySchema, raw);
    if (tampered.body.case !== "message") assert.fail("not a message");
    tampered.seq = 10_000n;
    const bytes = tampered.body.value.payload;
    bytes[bytes.length - 10] = (bytes[bytes.length - 10] ?? 0) ^ 0xff;
    const opened = await carol.toIncoming(tampered);
    assert.equal(opened.payload, undefined);
    assert.ok(opened.decodeError instanceof GroupDecryptError, String(opened.decodeError));
    assert.match(opened.decodeError.message, /cannot decrypt a message in group/);

    // A device linked later: once the gateway's 5 s view of bob's devices has expired, the next
    // send names bob3 as missing, hands it the key and reaches it, invisibly to the app.
    const bob3 = await link(bob1, "bob3");
    const b3 = new Inbox("b3", bob3);
    await bob3.connect();
    await new Promise((resolve) => setTimeout(resolve, 5_500));
    const failed: string[] = [];
    for (const c of Object.values(all)) c.on("sendFailed", (f) => failed.push(f.error.message));
    await alice1.send(id, "group-secret-5 after bob3 joined");
    await bob3.send(id, "group-secret-6 from bob3");
    for (const box of [...Object.values(inbox), b3]) {
      await box.has("group-secret-5 after bob3 joined", "group-secret-6 from bob3");
    }
    assert.deepEqual(failed, []);

    // carol is removed. Every remaining device rotates its key on the membership entry, so what
    // follows is under keys carol never received: handed her ciphertext, she cannot open it.
    const removed = await alice1.removeMembers(id, [carol.userId]);
    assert.ok(removed !== undefined);
    const remaining = [inbox.a1, inbox.a2, inbox.b1, inbox.b2, b3];
    await eventually(
      () => remaining.every((box) => box.entries.some((e) => e.seq === removed.seq)),
      () => "the removal reached every remaining device",
    );
    await bob1.send(id, "group-secret-7 after carol left");
    await alice2.send(id, "group-secret-8 after carol left");
    for (const box of remaining) {
      await box.has("group-secret-7 after carol left", "group-secret-8 after carol left");
    }
    for (const text of ["group-secret-7 after carol left", "group-secret-8 after carol left"]) {
      const later = inbox.a1.byText(text)?.raw;
      assert.ok(later !== undefined);
      const attempt = await carol.toIncoming(later);
      assert.equal(attempt.payload, undefined, `carol read "${text}"`);
      assert.ok(attempt.decodeError instanceof GroupDecryptError);
      assert.equal(attempt.decodeError.reason, "no-key");
    }
    assert.ok(!inbox.c.texts().some((t) => t.includes("after carol left")));
    assert.deepEqual(failed, []);
  });

  it("a process that never saw a removal still sends under a key the removed member does not hold", async () => {
    const alice = await register("ralice");
    const bob = await register("rbob");
    const carol = await register("rcarol");
    const a = new Inbox("alice", alice);
    const c = new Inbox("carol", carol);
    for (const client of [alice, bob, carol]) await client.connect();
    const { conversationId: id } = await alice.createGroup("rotation", [bob.userId, carol.userId]);
    await bob.send(id, "bob, before");
    await c.has("bob, before");

    // bob's app is closed when carol is removed, and a new process only sends: it reads the
    // members afresh (carol is gone) but never handles the membership entry.
    const profileDir = bob.profileDir;
    await bob.close();
    await alice.removeMembers(id, [carol.userId]);
    const fresh = await devices.reopen(profileDir);
    await fresh.sendUnary(id, "bob, after carol left");
    await a.has("bob, after carol left");
    const later = a.byText("bob, after carol left")?.raw;
    assert.ok(later !== undefined);
    const attempt = await carol.toIncoming(later);
    assert.equal(attempt.payload, undefined, "carol read a message sent after her removal");
    assert.ok(attempt.decodeError instanceof GroupDecryptError);
    assert.equal(attempt.decodeError.reason, "no-key");
  });
});
