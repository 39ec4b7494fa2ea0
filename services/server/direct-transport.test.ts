import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { isMessage } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createClient,
  createRouterTransport,
  type HandlerContext,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { pino } from "pino";
import {
  type LookupRoutesRequest,
  LookupRoutesRequestSchema,
  LookupRoutesResponseSchema,
  PresenceService,
} from "../../gen/switchboard/internal/v1/presence_pb.js";
import { errorBoundary, RETRY_AFTER_HEADER } from "../common/boundary.js";
import { LimitError } from "../common/errors.js";
import { createDirectTransport } from "./direct-transport.js";

/**
 * The direct transport must answer exactly as Connect's router transport (which it replaced)
 * did: the same messages, the same codes and retry hints through the same error boundary, and
 * deadlines and cancellation that reach the handler.
 */

type Presence = ServiceImpl<typeof PresenceService>;

/** A presence service whose LookupRoutes does what the test's `lookup` says. */
function presence(lookup: (userIds: string[], ctx: HandlerContext) => Promise<unknown>): Presence {
  const none = async () => ({});
  return {
    registerRoutes: none,
    unregisterRoutes: none,
    getPresence: none,
    async lookupRoutes(req: LookupRoutesRequest, ctx: HandlerContext) {
      assert.ok(isMessage(req, LookupRoutesRequestSchema), "the handler gets a message, not an init shape");
      return (await lookup(req.userIds, ctx)) as never;
    },
  } as unknown as Presence;
}

const log = pino({ level: "silent" });

function both(impl: Presence): Array<[string, Transport]> {
  const interceptors = [errorBoundary(log)];
  return [
    ["direct", createDirectTransport(() => [{ service: PresenceService, impl }], interceptors)],
    ["router", createRouterTransport((r) => r.service(PresenceService, impl), { router: { interceptors } })],
  ];
}

describe("direct in-process transport", () => {
  it("answers init shapes with messages, as the router transport does", async () => {
    const impl = presence(async (ids) => ({
      routes: ids.map((u) => ({ userId: u, deviceId: `${u}-d`, gatewayId: "g" })),
    }));
    for (const [name, transport] of both(impl)) {
      const client = createClient(PresenceService, transport);
      const res = await client.lookupRoutes({ userIds: ["u_a", "u_b"] });
      assert.ok(isMessage(res, LookupRoutesResponseSchema), name);
      assert.deepEqual(
        res.routes.map((r) => [r.userId, r.deviceId]),
        [
          ["u_a", "u_a-d"],
          ["u_b", "u_b-d"],
        ],
        name,
      );
    }
  });

  it("turns domain errors into the same codes and retry hints, and hides unexpected ones", async () => {
    const limited = presence(async () => {
      throw new LimitError("slow down", { retryAfterMs: 250 });
    });
    const broken = presence(async () => {
      throw new Error("secret internals");
    });
    for (const [name, transport] of both(limited)) {
      const err = await createClient(PresenceService, transport)
        .lookupRoutes({ userIds: [] })
        .then(() => undefined, ConnectError.from);
      assert.equal(err?.code, Code.ResourceExhausted, name);
      assert.equal(err?.rawMessage, "slow down", name);
      assert.equal(err?.metadata.get(RETRY_AFTER_HEADER), "250", name);
    }
    for (const [name, transport] of both(broken)) {
      const err = await createClient(PresenceService, transport)
        .lookupRoutes({ userIds: [] })
        .then(() => undefined, ConnectError.from);
      assert.equal(err?.code, Code.Internal, name);
      assert.equal(err?.rawMessage, "internal error", name);
    }
  });

  it("fails a call past its deadline with DEADLINE_EXCEEDED and aborts the handler's signal", async () => {
    const seen: { signal?: AbortSignal } = {};
    const slow = presence(
      (_ids, ctx) =>
        new Promise((resolve) => {
          seen.signal = ctx.signal;
          ctx.signal.addEventListener("abort", () => resolve({}), { once: true });
        }),
    );
    for (const [name, transport] of both(slow)) {
      delete seen.signal;
      const err = await createClient(PresenceService, transport)
        .lookupRoutes({ userIds: [] }, { timeoutMs: 30 })
        .then(() => undefined, ConnectError.from);
      assert.equal(err?.code, Code.DeadlineExceeded, name);
      assert.equal((seen.signal as AbortSignal | undefined)?.aborted, true, name);
    }
  });

  it("fails a call its caller abandons with CANCELED", async () => {
    const never = presence(() => new Promise(() => {}));
    for (const [name, transport] of both(never)) {
      const abort = new AbortController();
      const call = createClient(PresenceService, transport).lookupRoutes(
        { userIds: [] },
        { signal: abort.signal },
      );
      setTimeout(() => abort.abort(), 10);
      const err = await call.then(() => undefined, ConnectError.from);
      assert.equal(err?.code, Code.Canceled, name);
    }
  });

  it("refuses what it does not serve with UNIMPLEMENTED", async () => {
    const transport = createDirectTransport(() => [], []);
    const err = await createClient(PresenceService, transport)
      .lookupRoutes({ userIds: [] })
      .then(() => undefined, ConnectError.from);
    assert.equal(err?.code, Code.Unimplemented);
  });
});
