import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import {
  DeviceCiphertextSchema,
  EntrySchema,
  MembershipBodySchema,
  MessageBodySchema,
  type OutgoingEntry,
  OutgoingEntrySchema,
  ReactionBodySchema,
} from "../../gen/switchboard/v1/entry_pb.js";
import { wireCodeOf } from "../common/boundary.js";
import { DomainError } from "../common/errors.js";
import {
  compareDevices,
  DeviceSets,
  entryForDevice,
  mismatchError,
  mismatchOf,
  withoutKeyHolders,
} from "./device-set.js";
import { inBand } from "./session/frames.js";

const ALICE = "u_a";
const BOB = "u_b";
const ct = (deviceId: string, registrationId: number) =>
  create(DeviceCiphertextSchema, { deviceId, registrationId, ciphertext: new Uint8Array([1]), type: 2 });

describe("compareDevices", () => {
  const devices = new Map([
    [
      ALICE,
      new Map([
        ["dv_a1", 11],
        ["dv_a2", 12],
        ["dv_a3", 0],
      ]),
    ],
    [
      BOB,
      new Map([
        ["dv_b1", 21],
        ["dv_b2", 22],
      ]),
    ],
  ]);
  const sender = { userId: ALICE, deviceId: "dv_a1" };

  it("accepts every other device with keys, the sender's own included, and nothing else", () => {
    assert.equal(
      compareDevices(sender, [ALICE, BOB], devices, [ct("dv_a2", 12), ct("dv_b1", 21), ct("dv_b2", 22)]),
      undefined,
    );
  });

  it("names missing, extra and stale devices, sorted, with users and current registration ids", () => {
    const m = compareDevices(sender, [ALICE, BOB], devices, [
      ct("dv_b2", 99),
      ct("dv_a3", 5),
      ct("dv_a1", 11),
      ct("dv_x", 1),
    ]);
    assert.ok(m);
    assert.deepEqual(
      m.missing.map((d) => [d.userId, d.deviceId, d.registrationId]),
      [
        [ALICE, "dv_a2", 12],
        [BOB, "dv_b1", 21],
      ],
    );
    assert.deepEqual(
      m.extra.map((d) => [d.userId, d.deviceId]),
      [
        ["", "dv_a1"],
        ["", "dv_a3"],
        ["", "dv_x"],
      ],
    );
    assert.deepEqual(
      m.stale.map((d) => [d.userId, d.deviceId, d.registrationId]),
      [[BOB, "dv_b2", 22]],
    );
    const err = mismatchError(m);
    assert.match(
      err.message,
      /missing dv_a2 \(u_a\), dv_b1 \(u_b\); extra dv_a1, dv_a3, dv_x; stale dv_b2 \(u_b\)/,
    );
    assert.deepEqual(
      mismatchOf(err)?.stale.map((d) => d.deviceId),
      ["dv_b2"],
    );
  });
});

describe("entryForDevice", () => {
  it("keeps only the device's own ciphertext, without touching the shared entry", () => {
    const entry = create(EntrySchema, {
      seq: 5n,
      body: {
        case: "message",
        value: create(MessageBodySchema, { devicePayloads: [ct("dv_a2", 12), ct("dv_b1", 21)] }),
      },
    });
    const mine = entryForDevice(entry, "dv_b1");
    assert.equal(mine.seq, 5n);
    assert.ok(mine.body.case === "message");
    assert.deepEqual(
      mine.body.value.devicePayloads.map((p) => p.deviceId),
      ["dv_b1"],
    );
    assert.ok(entry.body.case === "message");
    assert.equal(entry.body.value.devicePayloads.length, 2, "the original is unchanged");
    const sender = entryForDevice(entry, "dv_a1");
    assert.ok(sender.body.case === "message");
    assert.equal(sender.body.value.devicePayloads.length, 0);
  });

  it("returns entries without device payloads as they are", () => {
    const plain = create(EntrySchema, {
      body: { case: "message", value: create(MessageBodySchema, { payload: new Uint8Array([1]) }) },
    });
    assert.equal(entryForDevice(plain, "dv_b1"), plain);
    const membership = create(EntrySchema, {
      body: { case: "membership", value: create(MembershipBodySchema) },
    });
    assert.equal(entryForDevice(membership, "dv_b1"), membership);
  });
});

const CAROL = "u_c";
/** Ids that pass the shape rules (26 base32 characters after the prefix). */
const dv = (name: string) => `dv_${name.padStart(26, "0")}`;
const key = (deviceId: string, registrationId: number, ciphertext: number[] = []) =>
  create(DeviceCiphertextSchema, {
    deviceId,
    registrationId,
    ciphertext: new Uint8Array(ciphertext),
    type: 3,
  });

function groupSend(
  devicePayloads: ReturnType<typeof key>[],
  payload: number[] = [9, 9],
  conversationId = "g_group",
): OutgoingEntry {
  return create(OutgoingEntrySchema, {
    clientMsgId: "m",
    conversationId,
    body: {
      case: "message",
      value: create(MessageBodySchema, { payload: new Uint8Array(payload), devicePayloads }),
    },
  });
}

describe("compareDevices in a group", () => {
  it("expects every member's devices with keys but the sending one, and names the others", () => {
    const devices = new Map([
      [
        ALICE,
        new Map([
          ["dv_a1", 11],
          ["dv_a2", 12],
        ]),
      ],
      [
        BOB,
        new Map([
          ["dv_b1", 21],
          ["dv_b2", 0],
        ]),
      ],
      [CAROL, new Map([["dv_c1", 31]])],
    ]);
    const sender = { userId: ALICE, deviceId: "dv_a1" };
    const members = [ALICE, BOB, CAROL];
    assert.equal(
      compareDevices(sender, members, devices, [ct("dv_a2", 12), ct("dv_b1", 21), ct("dv_c1", 31)]),
      undefined,
    );
    // Carol was removed: her device is extra, and a new member's device would be missing.
    const m = compareDevices(sender, [ALICE, BOB], devices, [
      ct("dv_a2", 12),
      ct("dv_b1", 21),
      ct("dv_c1", 31),
    ]);
    assert.deepEqual(
      m?.extra.map((d) => [d.userId, d.deviceId]),
      [["", "dv_c1"]],
    );
    const added = compareDevices(sender, members, devices, [ct("dv_a2", 12), ct("dv_b1", 21)]);
    assert.deepEqual(
      added?.missing.map((d) => [d.userId, d.deviceId, d.registrationId]),
      [[CAROL, "dv_c1", 31]],
    );
  });
});

describe("withoutKeyHolders", () => {
  it("drops empty ciphertexts and leaves the rest, without touching the request", () => {
    const entry = groupSend([key(dv("b1"), 21), key(dv("c1"), 31, [1, 2])]);
    const stored = withoutKeyHolders(entry);
    assert.ok(stored.body.case === "message");
    assert.deepEqual(
      stored.body.value.devicePayloads.map((p) => p.deviceId),
      [dv("c1")],
    );
    assert.deepEqual([...stored.body.value.payload], [9, 9]);
    assert.ok(entry.body.case === "message");
    assert.equal(entry.body.value.devicePayloads.length, 2);
    const full = groupSend([key(dv("c1"), 31, [1])]);
    assert.equal(withoutKeyHolders(full), full, "nothing to drop: the same object");
  });
});

describe("DeviceSets with groups", () => {
  const A1 = dv("a1");
  const A2 = dv("a2");
  const B1 = dv("b1");
  const C1 = dv("c1");

  /** A directory and a sequencer whose answers the test changes, counting the calls. */
  function fixture(options: { ttlMs?: number; maxGroupMembers?: number } = {}) {
    const state = {
      members: new Map<string, string[]>([["g_group", [ALICE, BOB]]]),
      devices: new Map<string, Map<string, number>>([
        [
          ALICE,
          new Map([
            [A1, 11],
            [A2, 12],
          ]),
        ],
        [BOB, new Map([[B1, 21]])],
        [CAROL, new Map([[C1, 31]])],
      ]),
      conversationReads: 0,
      directoryReads: 0,
      now: 0,
    };
    const directory = {
      getDeviceRegistrations: async ({ userIds }: { userIds: string[] }) => {
        state.directoryReads++;
        return {
          users: userIds.flatMap((userId) => {
            const d = state.devices.get(userId);
            return d === undefined
              ? []
              : [
                  {
                    userId,
                    devices: [...d].map(([deviceId, registrationId]) => ({ deviceId, registrationId })),
                  },
                ];
          }),
        };
      },
    } as unknown as Client<typeof DirectoryService>;
    const sequencer = {
      getConversation: async ({ userId, conversationId }: { userId: string; conversationId: string }) => {
        state.conversationReads++;
        const members = state.members.get(conversationId);
        if (members === undefined) throw new ConnectError("conversation not found", Code.NotFound);
        if (!members.includes(userId)) throw new ConnectError("not a member", Code.PermissionDenied);
        return { members: members.map((m) => ({ userId: m })) };
      },
    } as unknown as Client<typeof SequencerService>;
    const sets = new DeviceSets(directory, sequencer, {
      maxPayloadBytes: 100,
      maxDevicesPerUser: 2,
      maxGroupSize: 3,
      ttlMs: options.ttlMs ?? 5000,
      ...(options.maxGroupMembers !== undefined && { maxGroupMembers: options.maxGroupMembers }),
      now: () => state.now,
    });
    return { state, sets };
  }
  const alice = { userId: ALICE, deviceId: A1 };
  // A domain error or a ConnectError, as the device would read it.
  const refusal = (code: Code, pattern: RegExp) => (e: unknown) =>
    wireCodeOf(e) === code && e instanceof Error && pattern.test(inBand(e).rawMessage);

  it("accepts the exact set, passes the key holders' empty ciphertexts to nobody, and leaves payload-only sends alone", async () => {
    const { sets } = fixture();
    const checked = await sets.check(alice, groupSend([key(A2, 12), key(B1, 21, [5])]));
    assert.ok(checked?.body.case === "message");
    assert.deepEqual(
      checked.body.value.devicePayloads.map((p) => p.deviceId),
      [B1],
    );
    assert.equal(sets.check(alice, groupSend([])), undefined, "no device payloads: no check");
    const reaction = create(OutgoingEntrySchema, {
      clientMsgId: "r",
      conversationId: "g_group",
      body: {
        case: "reaction",
        value: create(ReactionBodySchema, {
          targetSeq: 2n,
          payload: new Uint8Array([1]),
          devicePayloads: [key(A2, 12), key(B1, 21)],
        }),
      },
    });
    const r = await sets.check(alice, reaction);
    assert.ok(r?.body.case === "reaction");
    assert.equal(r.body.value.devicePayloads.length, 0);
  });

  it("refuses device_payloads without payload, and sets over the limits, with INVALID_ARGUMENT", async () => {
    const { sets } = fixture();
    await assert.rejects(
      sets.check(alice, groupSend([key(A2, 12), key(B1, 21, [5])], [])) ?? Promise.resolve(),
      refusal(Code.InvalidArgument, /payload: required with device_payloads in a group/),
    );
    await assert.rejects(
      sets.check(
        alice,
        groupSend([key(A2, 12), key(B1, 21, new Array(60).fill(1))], new Array(41).fill(1)),
      ) ?? Promise.resolve(),
      refusal(Code.InvalidArgument, /payload and device_payloads: 101 bytes together; the limit is 100/),
    );
    const seven = ["1", "2", "3", "4", "5", "6", "7"].map((n) => key(dv(`x${n}`), 1));
    await assert.rejects(
      sets.check(alice, groupSend(seven)) ?? Promise.resolve(),
      refusal(Code.InvalidArgument, /at most 6 devices in a group conversation, got 7/),
    );
  });

  it("caches members for the TTL, reads them again before refusing, and names a new member's devices missing", async () => {
    const { state, sets } = fixture();
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)]));
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)]));
    assert.equal(state.conversationReads, 1, "members come from the cache within the TTL");

    // Carol joins; a sender who already knows is accepted on a fresh read, not refused.
    state.members.set("g_group", [ALICE, BOB, CAROL]);
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21), key(C1, 31, [7])]));
    assert.equal(state.conversationReads, 2);
    // The cache now has Carol: a sender who does not know is refused, after one more fresh read.
    await assert.rejects(
      sets.check(alice, groupSend([key(A2, 12), key(B1, 21)])) ?? Promise.resolve(),
      (e: unknown) => {
        const m = e instanceof ConnectError || e instanceof DomainError ? mismatchOf(e) : undefined;
        assert.deepEqual(
          m?.missing.map((d) => [d.userId, d.deviceId, d.registrationId]),
          [[CAROL, C1, 31]],
        );
        return true;
      },
    );
    assert.equal(state.conversationReads, 3);

    // Bob is removed: the cached list still has him, so leaving him out is checked afresh and
    // accepted; naming him is extra.
    state.members.set("g_group", [ALICE, CAROL]);
    await sets.check(alice, groupSend([key(A2, 12), key(C1, 31)]));
    assert.equal(state.conversationReads, 4);
    await assert.rejects(
      sets.check(alice, groupSend([key(A2, 12), key(B1, 21), key(C1, 31)])) ?? Promise.resolve(),
      (e: unknown) => {
        const m = e instanceof ConnectError || e instanceof DomainError ? mismatchOf(e) : undefined;
        assert.deepEqual(
          m?.extra.map((d) => [d.userId, d.deviceId]),
          [["", B1]],
        );
        return true;
      },
    );
    assert.equal(state.conversationReads, 5, "the refusal read the members again");

    // A membership entry passing the gateway drops the cached members at once.
    await sets.check(alice, groupSend([key(A2, 12), key(C1, 31)]));
    assert.equal(state.conversationReads, 5);
    sets.membershipChanged("g_group");
    await sets.check(alice, groupSend([key(A2, 12), key(C1, 31)]));
    assert.equal(state.conversationReads, 6);
  });

  it("refuses a non-member with the sequencer's PERMISSION_DENIED and no device lists", async () => {
    const { sets } = fixture();
    await assert.rejects(
      sets.check({ userId: CAROL, deviceId: C1 }, groupSend([key(A1, 11)])) ?? Promise.resolve(),
      (e: unknown) =>
        e instanceof ConnectError && e.code === Code.PermissionDenied && mismatchOf(e) === undefined,
    );
  });

  it("re-reads members after the TTL and keeps the member ids within the bound", async () => {
    const { state, sets } = fixture({ ttlMs: 1000, maxGroupMembers: 3 });
    state.members.set("g_other", [ALICE, BOB]);
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)]));
    state.now = 1001;
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)]));
    assert.equal(state.conversationReads, 2, "read again after the TTL");
    // Two groups of two members exceed the bound of 3 ids: the older group is dropped.
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)], [1], "g_other"));
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)], [1], "g_other"));
    assert.equal(state.conversationReads, 3);
    await sets.check(alice, groupSend([key(A2, 12), key(B1, 21)]));
    assert.equal(state.conversationReads, 4, "the first group was dropped from the cache");
  });
});

describe("DeviceSets with direct conversations", () => {
  const DIRECT = "d_pair";
  const alice = { userId: ALICE, deviceId: dv("a1") };
  const bob = { userId: BOB, deviceId: dv("b1") };
  const carol = { userId: CAROL, deviceId: dv("c1") };

  /** A sequencer whose GetConversation answers wait until the test opens the gate, counted by user. */
  function fixture() {
    const reads: string[] = [];
    let open!: () => void;
    const gate = new Promise<void>((resolve) => {
      open = resolve;
    });
    const sequencer = {
      getConversation: async ({ userId }: { userId: string; conversationId: string }) => {
        reads.push(userId);
        await gate;
        if (userId !== ALICE && userId !== BOB) throw new ConnectError("not a member", Code.PermissionDenied);
        return { members: [{ userId: ALICE }, { userId: BOB }] };
      },
    } as unknown as Client<typeof SequencerService>;
    const sets = new DeviceSets({} as Client<typeof DirectoryService>, sequencer, {
      maxPayloadBytes: 100,
      maxDevicesPerUser: 2,
      maxGroupSize: 3,
    });
    return { reads, open, sets };
  }

  it("reads the members once for every send that waits for them, then from the cache", async () => {
    const { reads, open, sets } = fixture();
    const waiting = Array.from({ length: 50 }, (_, i) => sets.directPair(i % 2 === 0 ? alice : bob, DIRECT));
    open();
    for (const pair of await Promise.all(waiting)) assert.deepEqual(pair, [ALICE, BOB]);
    assert.deepEqual(reads, [ALICE], "one read for fifty sends of both members");
    assert.deepEqual(await sets.directPair(bob, DIRECT), [ALICE, BOB]);
    assert.equal(reads.length, 1, "the pair is cached");
  });

  it("reads again as the sender when a read made as another user fails, and not when its own did", async () => {
    const { reads, open, sets } = fixture();
    const outsider = [sets.directPair(carol, DIRECT), sets.directPair(carol, DIRECT)];
    const member = sets.directPair(alice, DIRECT);
    open();
    for (const refused of outsider) {
      await assert.rejects(
        refused,
        (e: unknown) => e instanceof ConnectError && e.code === Code.PermissionDenied,
      );
    }
    assert.deepEqual(await member, [ALICE, BOB]);
    assert.deepEqual(
      reads,
      [CAROL, ALICE],
      "the outsider's sends shared one read; the member read as itself",
    );
    await assert.rejects(sets.directPair(carol, DIRECT), /not a member of this conversation/);
    assert.equal(reads.length, 2, "once the pair is known an outsider is refused without a read");
  });
});
