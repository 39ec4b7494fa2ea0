import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ContentKind, SealedContentSchema } from "../gen/switchboard/v1/content_pb.js";
import { type Entry, EntrySchema } from "../gen/switchboard/v1/entry_pb.js";
import { GroupDecryptError } from "./crypto/groups.js";
import { DecryptError } from "./crypto/pairwise.js";
import {
  checkContext,
  E2ee,
  KEYS_ONLY_PAYLOAD_TYPE,
  PAIRWISE_PAYLOAD_TYPE,
  SENDER_KEY_PAYLOAD_TYPE,
} from "./e2ee.js";
import type { ServerConnection } from "./transport.js";

function groupEntry(
  conversationId: string,
  senderUserId: string,
  senderDeviceId: string,
  payloadType: number,
): Entry {
  return create(EntrySchema, {
    conversationId,
    seq: 5n,
    senderUserId,
    senderDeviceId,
    body: { case: "message", value: { payloadType, payload: new Uint8Array([1]) } },
  });
}

describe("E2ee retry requests (rate-limited) and content binding", () => {
  let dir: string;
  let e2ee: E2ee;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-e2ee-unit-"));
    // No call reaches the server in these tests.
    e2ee = await E2ee.open(dir, { userId: "u_me", deviceId: "dv_me" }, {} as ServerConnection, () => {});
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("asks a sending device for its key once per group per interval, only for a missing or broken key", () => {
    const sender = { userId: "u_alice", deviceId: "dv_alice" };
    const noKey = new GroupDecryptError("g_1", sender, "no-key", "no key");
    const entry = groupEntry("g_1", "u_alice", "dv_alice", SENDER_KEY_PAYLOAD_TYPE);
    const first = e2ee.retryFor(entry, noKey);
    assert.deepEqual(
      { conversationId: first?.conversationId, seq: first?.seq, deviceId: first?.deviceId },
      { conversationId: "g_1", seq: 5n, deviceId: "dv_alice" },
    );
    assert.equal(e2ee.retryFor(entry, noKey), undefined, "asked twice within the interval");
    // Another group, or a broken distribution in a keys-only part: asked too.
    const broken = new DecryptError(sender, "invalid", "bad mac");
    assert.ok(e2ee.retryFor(groupEntry("g_2", "u_alice", "dv_alice", KEYS_ONLY_PAYLOAD_TYPE), broken));
    // Never for duplicates, direct messages, or this user's own devices.
    assert.equal(
      e2ee.retryFor(
        groupEntry("g_3", "u_alice", "dv_alice", SENDER_KEY_PAYLOAD_TYPE),
        new GroupDecryptError("g_3", sender, "duplicate", "again"),
      ),
      undefined,
    );
    assert.equal(
      e2ee.retryFor(groupEntry("d_1", "u_alice", "dv_alice", PAIRWISE_PAYLOAD_TYPE), broken),
      undefined,
    );
    assert.equal(
      e2ee.retryFor(groupEntry("g_4", "u_me", "dv_other", SENDER_KEY_PAYLOAD_TYPE), noKey),
      undefined,
    );
  });

  it("refuses content encrypted for another conversation, kind or target", () => {
    const entry = create(EntrySchema, {
      conversationId: "g_1",
      seq: 9n,
      senderUserId: "u_alice",
      senderDeviceId: "dv_alice",
      body: { case: "edit", value: { targetSeq: 3n } },
    });
    const content = (fields: { conversationId: string; kind: ContentKind; targetSeq: bigint }) =>
      create(SealedContentSchema, fields);
    checkContext(content({ conversationId: "g_1", kind: ContentKind.EDIT, targetSeq: 3n }), entry);
    for (const [fields, why] of [
      [{ conversationId: "d_1", kind: ContentKind.EDIT, targetSeq: 3n }, /for conversation d_1, not g_1/],
      [
        { conversationId: "g_1", kind: ContentKind.MESSAGE, targetSeq: 0n },
        /for MESSAGE entries, not a edit/,
      ],
      [{ conversationId: "g_1", kind: ContentKind.EDIT, targetSeq: 4n }, /targets #4, not #3/],
      [{ conversationId: "", kind: ContentKind.UNSPECIFIED, targetSeq: 0n }, /for conversation \(none\)/],
    ] as const) {
      assert.throws(
        () => checkContext(content(fields), entry),
        (err: unknown) =>
          err instanceof DecryptError && err.reason === "wrong-context" && why.test(err.message),
      );
    }
  });
});
