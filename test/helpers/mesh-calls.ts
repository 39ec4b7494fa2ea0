/**
 * Calls across two gateway processes of the mesh: the mesh itself (started in before(), stopped
 * in after() with every device the suite tracked) and the call frames and waits its suites share.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type CallEventFrame, CallFrameSchema, CallSignal } from "../../gen/switchboard/v1/calls_pb.js";
import { Mesh } from "../../services/mesh/launcher.js";
import type { TestDevice } from "./device.js";
import { removeDir } from "./server.js";

/** A client frame carrying a call signal. */
export const callFrame = (value: MessageInitShape<typeof CallFrameSchema>) => ({
  case: "call" as const,
  value: create(CallFrameSchema, value),
});

/** The call events a device has received for `callId` with `signal`. */
export const callEvents = (d: TestDevice, callId: string, signal: CallSignal): CallEventFrame[] =>
  d.ofCase("call").filter((e) => e.callId === callId && e.signal === signal);

/** Waits (30 s at most) until the device has `count` events of `signal` for the call. */
export function waitCall(
  d: TestDevice,
  callId: string,
  signal: CallSignal,
  count = 1,
): Promise<CallEventFrame[]> {
  return d.waitFor(
    () => {
      const got = callEvents(d, callId, signal);
      return got.length >= count ? got : undefined;
    },
    `${count} ${CallSignal[signal]} for ${callId} on ${d.deviceId}`,
    30_000,
  );
}

/** Opens the device's stream and waits until it has caught up. */
export async function online(d: TestDevice): Promise<void> {
  d.connect();
  await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught_up", 20_000);
}

/**
 * A mesh of separate processes with two gateways, one sequencer and one fanout (over the test
 * NATS and Redis, on LMDB), started in before() with `env` for every process, and stopped in
 * after() with every device tracked. Each process's log lines are kept, for what the gateways do
 * that devices do not see.
 */
export function twoGatewayMesh(name: string, options: { env?: Record<string, string> } = {}) {
  let dir = "";
  let mesh: Mesh | undefined;
  const devices: TestDevice[] = [];
  const logLines: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), `sb-${name}-`));
    mesh = await Mesh.start({
      dir,
      gateways: 2,
      sequencers: 1,
      fanouts: 1,
      ...(options.env === undefined ? {} : { env: options.env }),
      onLog: (from, line) => {
        logLines.push(`${from} ${line}`);
      },
    });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    await mesh?.stop();
    if (dir !== "") await removeDir(dir);
  });

  return {
    /** The two gateways' URLs (after before()). */
    get gateways(): [string, string] {
      if (mesh === undefined) throw new Error("the mesh starts in before()");
      return mesh.gatewayUrls as [string, string];
    },
    /** Closes the devices with the mesh; returns them. */
    track(...ds: TestDevice[]): TestDevice[] {
      devices.push(...ds);
      return ds;
    },
    /** Waits (30 s at most) for a process's log line that holds both `text` and `callId`. */
    async logged(text: string, callId: string): Promise<void> {
      const deadline = Date.now() + 30_000;
      while (!logLines.some((l) => l.includes(text) && l.includes(callId))) {
        if (Date.now() > deadline) throw new Error(`no log line "${text}" for ${callId}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
}
