import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type CallEventFrame,
  CallFrameSchema,
  CallMedia,
  CallOutcome,
  CallSignal,
} from "../../gen/switchboard/v1/calls_pb.js";
import { Mesh } from "../../services/mesh/launcher.js";
import { meshPrerequisites } from "../helpers/backends.js";
import { TestDevice, uniqueName } from "../helpers/device.js";

/**
 * Calls across gateways in the distributed topology (every service its own OS process, over a
 * real nats-server and redis-server): call frames go gateway to gateway on the delivery channel,
 * the accept race is decided by the caller's gateway, and the call's entry is appended through
 * the sequencer process.
 */

const { skip } = meshPrerequisites();

const callFrame = (value: MessageInitShape<typeof CallFrameSchema>) => ({
  case: "call" as const,
  value: create(CallFrameSchema, value),
});

const callEvents = (d: TestDevice, callId: string, signal: CallSignal): CallEventFrame[] =>
  d.ofCase("call").filter((e) => e.callId === callId && e.signal === signal);

function waitCall(d: TestDevice, callId: string, signal: CallSignal, count = 1): Promise<CallEventFrame[]> {
  return d.waitFor(
    () => {
      const got = callEvents(d, callId, signal);
      return got.length >= count ? got : undefined;
    },
    `${count} ${CallSignal[signal]} on ${d.deviceId}`,
    20_000,
  );
}

async function online(d: TestDevice): Promise<void> {
  d.connect();
  await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught_up", 20_000);
}

describe("calls across gateways in the mesh", { skip }, () => {
  let dir = "";
  let mesh: Mesh | undefined;
  const devices: TestDevice[] = [];
  const logLines: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "sb-calls-mesh-"));
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: 1,
      fanouts: 1,
      onLog: (name, line) => {
        logLines.push(`${name} ${line}`);
      },
    });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await mesh?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  it("the caller on one gateway, two callee devices on the other: both ring, the first accept wins, the loser stops, the entry reaches everyone", async () => {
    const [g0, g1] = mesh!.gatewayUrls as [string, string];
    const alice = await TestDevice.register(g0, uniqueName("ma"));
    const bob1 = await TestDevice.register(g1, uniqueName("mb"));
    const bob2 = await bob1.link("tablet");
    devices.push(alice, bob1, bob2);
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob1.userId });
    for (const d of [alice, bob1, bob2]) await online(d);
    const callId = "mesh-call-1";

    alice.write(
      callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.OFFER, media: CallMedia.AUDIO }),
    );
    await waitCall(bob1, callId, CallSignal.OFFER);
    await waitCall(bob2, callId, CallSignal.OFFER);

    // Both accept; the caller's gateway lets exactly one through and tells the other to stop.
    bob1.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    bob2.write(callFrame({ callId, peerUserId: alice.userId, signal: CallSignal.ACCEPT }));
    const [accepted] = await waitCall(alice, callId, CallSignal.ACCEPT);
    const winner = accepted!.fromDeviceId;
    const loser = winner === bob1.deviceId ? bob2 : bob1;
    const [stop] = await waitCall(loser, callId, CallSignal.ANSWERED_ELSEWHERE);
    assert.equal(stop!.fromDeviceId, winner);
    assert.equal(callEvents(alice, callId, CallSignal.ACCEPT).length, 1, "one accept reached the caller");

    alice.write(callFrame({ callId, peerUserId: bob1.userId, signal: CallSignal.HANGUP }));
    for (const d of [alice, bob1, bob2]) {
      const entry = await d.waitFor(
        () => d.entries(conversation!.conversationId).find((e) => e.body.case === "call"),
        `the call entry on ${d.deviceId}`,
        20_000,
      );
      assert.ok(entry.body.case === "call");
      assert.equal(entry.body.value.outcome, CallOutcome.ANSWERED);
      assert.equal(entry.body.value.answeredDeviceId, winner);
    }
  });
});
