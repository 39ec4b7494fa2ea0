import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import { GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";
import { defaultEdgeLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { Refusals } from "../common/refusals.js";
import type { GatewayCore } from "../gateway/index.js";
import { deviceStreams } from "./device-stream.js";
import { EdgeGuard } from "./edge.js";
import { frontDoor } from "./front-door.js";

const PATH = `/${GatewayService.typeName}/${GatewayService.method.connect.name}`;
/** How long the gateway below takes to authenticate: the window in which a device can go. */
const AUTH_MS = 150;

/** A session of the gateway below: it records whether it was closed, and has no frames. */
class FakeSession {
  closed = false;
  readonly outbound = {
    framesReady: () => new Promise<boolean>((resolve) => this.waiters.push(() => resolve(false))),
    takeBatch: () => [],
  };
  private readonly waiters: Array<() => void> = [];

  startPushed() {
    return { frame: () => true, end: async () => {}, fail: () => {} };
  }

  close(): void {
    this.closed = true;
    for (const wake of this.waiters.splice(0)) wake();
  }
}

/**
 * The device stream's own handling of the stream around the gateway: the gateway here stands in
 * for GatewayCore with an authentication that takes AUTH_MS, as a signature check on the thread
 * pool or a call to the accounts service does, so a device can reset its stream meanwhile.
 */
describe("device stream: a device that goes while it is authenticated", () => {
  let door: ReturnType<typeof frontDoor>;
  let url = "";
  const sessions: FakeSession[] = [];
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);

  before(async () => {
    process.on("unhandledRejection", onUnhandled);
    const gateway = {
      authenticate: () => new Promise((resolve) => setTimeout(() => resolve({ deviceId: "dv_a" }), AUTH_MS)),
      open: () => {
        const session = new FakeSession();
        sessions.push(session);
        return session;
      },
      refused: () => {},
    } as unknown as GatewayCore;
    const refusals = new Refusals(createLogger({ level: "silent" }));
    const edge = new EdgeGuard(defaultEdgeLimits, refusals, new Set([PATH]), undefined);
    door = frontDoor(
      () => assert.fail("the device stream reached the general handler"),
      edge,
      defaultEdgeLimits,
      deviceStreams({
        gateway,
        readMaxBytes: 1 << 20,
        wireErrors: (thrown) => ConnectError.from(thrown),
        streamErrors: () => {},
        refusals,
      }),
    );
    await new Promise<void>((resolve) => door.server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(door.server.address() as AddressInfo).port}`;
  });
  after(async () => {
    process.off("unhandledRejection", onUnhandled);
    door.h1.close();
    await new Promise<void>((resolve) => door.server.close(() => resolve()));
  });

  /** Opens a device stream, resolving with it and its answer's status (undefined: none came). */
  function open(client: http2.ClientHttp2Session): {
    stream: http2.ClientHttp2Stream;
    status: Promise<number | undefined>;
  } {
    const stream = client.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: "Bearer t",
    });
    stream.on("error", () => {});
    const status = new Promise<number | undefined>((resolve) => {
      stream.on("response", (headers) => resolve(Number(headers[":status"])));
      stream.on("close", () => resolve(undefined));
    });
    return { stream, status };
  }

  /** Waits until the condition holds, for at most 10 s. */
  async function until(condition: () => boolean, what: string): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (!condition()) {
      if (Date.now() > deadline) assert.fail(`not within 10 s: ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it("closes the session it opened for a stream reset before, and answers nobody", async () => {
    const client = http2.connect(url);
    try {
      const before = sessions.length;
      const { stream, status } = open(client);
      // Reset well within the authentication. (Should this process stall past it, the stream is
      // answered and then reset, and its session is closed all the same.)
      setTimeout(() => stream.close(http2.constants.NGHTTP2_CANCEL), AUTH_MS / 3);
      assert.equal(await status, undefined, "no answer to a stream already reset");
      await until(() => sessions.length === before + 1, "the stream authenticated and opened");
      await until(() => sessions.at(-1)?.closed === true, "the session of the reset stream closed");
      assert.deepEqual(unhandled, []);
    } finally {
      client.close();
    }
  });

  it("answers a stream that stays, and closes its session when it is reset later", async () => {
    const client = http2.connect(url);
    try {
      const before = sessions.length;
      const { stream, status } = open(client);
      assert.equal(await status, 200);
      assert.equal(sessions.length, before + 1);
      assert.equal(sessions.at(-1)?.closed, false, "open while the device is there");
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await until(() => sessions.at(-1)?.closed === true, "closed once the device reset its stream");
      assert.deepEqual(unhandled, []);
    } finally {
      client.close();
    }
  });
});
