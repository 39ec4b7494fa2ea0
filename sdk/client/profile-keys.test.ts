import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ContentKind, SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import { MemoryStorage } from "../storage/memory.js";
import { ProfileKeys } from "./profile-keys.js";

test("the own key is made once and kept; attached to a content without touching its fields", async () => {
  const storage = new MemoryStorage();
  const keys = new ProfileKeys(storage);
  const own = await keys.own();
  assert.equal(own.length, 32);
  assert.deepEqual(await keys.own(), own);
  assert.deepEqual(await new ProfileKeys(storage).own(), own, "read back from storage by a new process");
  assert.notDeepEqual(await new ProfileKeys(new MemoryStorage()).own(), own, "another device, another key");

  const content = toBinary(
    SealedContentSchema,
    create(SealedContentSchema, {
      payload: new TextEncoder().encode("hello"),
      conversationId: "d_abc",
      kind: ContentKind.MESSAGE,
    }),
  );
  const parsed = fromBinary(SealedContentSchema, await keys.attach(content));
  assert.deepEqual(parsed.profileKey, own);
  assert.equal(new TextDecoder().decode(parsed.payload), "hello");
  assert.equal(parsed.conversationId, "d_abc");
  assert.equal(parsed.kind, ContentKind.MESSAGE);
});

test("received keys are kept per device of each user; the own user's include this device's", async () => {
  const storage = new MemoryStorage();
  const keys = new ProfileKeys(storage);
  const a1 = new Uint8Array(32).fill(1);
  const a2 = new Uint8Array(32).fill(2);
  const b1 = new Uint8Array(32).fill(3);
  await keys.received("u_alice", "dv_a1", a1);
  await keys.received("u_alice", "dv_a2", a2);
  await keys.received("u_bob", "dv_b1", b1);
  await keys.received("u_bob", "dv_b2", new Uint8Array(31).fill(4)); // wrong length: ignored
  assert.deepEqual(await keys.of("u_alice", "u_me"), [a1, a2]);
  assert.deepEqual(await keys.of("u_bob", "u_me"), [b1]);
  // A device's newer key replaces its older one.
  const a1b = new Uint8Array(32).fill(5);
  await keys.received("u_alice", "dv_a1", a1b);
  assert.deepEqual(await new ProfileKeys(storage).of("u_alice", "u_me"), [a1b, a2]);
  // For the own user: this device's key first, then its siblings'.
  await keys.received("u_me", "dv_sibling", a2);
  assert.deepEqual(await keys.of("u_me", "u_me"), [await keys.own(), a2]);
});
