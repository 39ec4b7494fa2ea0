/**
 * Call frames and the waits of the call suites (test/e2e/calls-*), against one server process or a
 * mesh alike: every wait reads a TestDevice's stream, and fails at its deadline with what it
 * waited for. The mesh itself is test/helpers/mesh-calls.ts.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type CallEventFrame,
  CallFrameSchema,
  type CallLogBody,
  CallOutcome,
  CallSignal,
} from "../../gen/switchboard/v1/calls_pb.js";
import type { TestDevice } from "./device.js";

/** How long a call wait may take: the longest any suite needed across two gateway processes. */
const DEADLINE_MS = 30_000;

/** A ciphertext of UTF-8 text, for payloads. */
export const bytes = (text: string) => new TextEncoder().encode(text);
/** A ciphertext's UTF-8 text. */
export const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** A client frame carrying a call signal, for TestDevice.write. */
export const callFrame = (value: MessageInitShape<typeof CallFrameSchema>) => ({
  case: "call" as const,
  value: create(CallFrameSchema, value),
});

/** A group call frame from `d` to the call's host device: JOIN or LEAVE. */
export function toHost(
  d: TestDevice,
  host: TestDevice,
  callId: string,
  conversationId: string,
  signal: CallSignal,
): void {
  d.write(
    callFrame({ callId, conversationId, peerUserId: host.userId, hostDeviceId: host.deviceId, signal }),
  );
}

/** The call events a device has received for `callId` with `signal`, in order (no wait). */
export const callEvents = (d: TestDevice, callId: string, signal: CallSignal): CallEventFrame[] =>
  d.ofCase("call").filter((e) => e.callId === callId && e.signal === signal);

/**
 * Waits (30 s, or `timeoutMs`) until the device has `count` (1 unless given) events of `signal` for
 * the call, from the device `from` if given; returns every such event so far, in order.
 */
export function waitCall(
  d: TestDevice,
  callId: string,
  signal: CallSignal,
  options: { count?: number; from?: TestDevice; timeoutMs?: number } = {},
): Promise<[CallEventFrame, ...CallEventFrame[]]> {
  const { count = 1, from, timeoutMs = DEADLINE_MS } = options;
  return d.waitFor(
    () => {
      const got = callEvents(d, callId, signal).filter(
        (e) => from === undefined || e.fromDeviceId === from.deviceId,
      );
      return got.length >= Math.max(count, 1) ? (got as [CallEventFrame, ...CallEventFrame[]]) : undefined;
    },
    `${count} ${CallSignal[signal]}${from ? ` from ${from.deviceId}` : ""} for ${callId} on ${d.deviceId}`,
    timeoutMs,
  );
}

/** Waits (30 s) for the device's error frame answering a refused call frame, after `seen` earlier ones. */
export function waitCallError(d: TestDevice, seen = 0) {
  return d.waitFor(
    () => d.ofCase("error").filter((e) => e.frame === "call")[seen],
    "a call error frame",
    DEADLINE_MS,
  );
}

/** Opens the device's stream and waits (30 s) until it has caught up (its route is registered by then). */
export async function online(d: TestDevice): Promise<TestDevice> {
  d.connect();
  await d.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught_up", DEADLINE_MS);
  return d;
}

/** A call's log entry as a device received it. */
export interface CallEntry {
  /** The entry's place in its conversation's log. */
  seq: bigint;
  /** The device the entry was written as. */
  sender: string;
  call: CallLogBody;
}

/**
 * Waits (30 s, or `timeoutMs`) for the call's final log entry (not ONGOING) on the device's stream,
 * in `conversationId` if given; with `anyOutcome`, for its first entry, ONGOING or not.
 */
export function callEntry(
  d: TestDevice,
  callId: string,
  options: { anyOutcome?: boolean; conversationId?: string; timeoutMs?: number } = {},
): Promise<CallEntry> {
  const { anyOutcome = false, conversationId, timeoutMs = DEADLINE_MS } = options;
  return d.waitFor(
    () => {
      for (const e of d.entries(conversationId))
        if (
          e.body.case === "call" &&
          e.body.value.callId === callId &&
          (anyOutcome || e.body.value.outcome !== CallOutcome.ONGOING)
        )
          return { seq: e.seq, sender: e.senderDeviceId, call: e.body.value };
      return undefined;
    },
    `the ${anyOutcome ? "" : "final "}entry of ${callId} on ${d.deviceId}`,
    timeoutMs,
  );
}
