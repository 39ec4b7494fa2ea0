import assert from "node:assert/strict";
import * as http from "node:http";
import * as http2 from "node:http2";
import { after, describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { DEVICE_STREAM_HEADERS } from "../../test/helpers/raw-grpc.js";
import { defaultEdgeLimits, type EdgeLimits } from "../common/config.js";
import { createLogger } from "../common/log.js";
import { Refusals } from "../common/refusals.js";
import { freePort } from "../mesh/servers.js";
import type { DeviceHttp2Stream, DeviceStreams } from "./device-stream.js";
import { DEVICE_STREAM_PATH, isGrpcDeviceStream } from "./device-stream-request.js";
import { type StreamPort, serveStreamPort } from "./stream-threads.js";

/**
 * The stream port's hand-off between its thread and this one (stream-threads.ts,
 * stream-thread.ts), with a real worker thread and real HTTP/2 clients, and a stand-in for the
 * device stream's fast path that records what it is given. The fast path itself on this port
 * is tested end to end with stock clients in test/e2e/device-stream-wire.test.ts.
 */

interface Served {
  stream: DeviceHttp2Stream;
  headers: http2.IncomingHttpHeaders;
  body: Buffer[];
}

/** A fast path that answers nothing by itself; each test drives the streams it is given. */
function recorder(): DeviceStreams & { served: Served[]; waits: number[]; next(): Promise<Served> } {
  const served: Served[] = [];
  const waits: number[] = [];
  let waiting: ((s: Served) => void) | undefined;
  return {
    served,
    waits,
    accepts: isGrpcDeviceStream,
    handedOver: (waitedMs) => waits.push(waitedMs),
    serve(stream, headers) {
      const s: Served = { stream, headers, body: [] };
      served.push(s);
      stream.on("data", (chunk) => s.body.push(Buffer.from(chunk)));
      waiting?.(s);
      waiting = undefined;
    },
    next() {
      return new Promise((resolve) => {
        waiting = resolve;
      });
    },
  };
}

async function until(predicate: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("the stream port", () => {
  const ports: StreamPort[] = [];
  const sessions: http2.ClientHttp2Session[] = [];
  after(async () => {
    for (const s of sessions) s.destroy();
    await Promise.all(ports.map((p) => p.close()));
  });

  async function start(limits: Partial<EdgeLimits> = {}) {
    const streams = recorder();
    const refusals = new Refusals(createLogger({ level: "silent" }));
    const port = await serveStreamPort({
      host: "127.0.0.1",
      port: await freePort(),
      limits: { ...defaultEdgeLimits, ...limits },
      streams,
      refusals,
      log: createLogger({ level: "silent" }),
    });
    ports.push(port);
    return { port, streams, refusals };
  }

  function connect(url: string): http2.ClientHttp2Session {
    const session = http2.connect(url);
    session.on("error", () => {});
    sessions.push(session);
    return session;
  }

  it("hands a device stream's headers and body to this thread, and its answer and trailers back", async () => {
    const { port, streams } = await start();
    const req = connect(port.url).request(DEVICE_STREAM_HEADERS);
    const served = streams.next();
    req.write(Buffer.from("hello "));
    const s = await served;
    assert.equal(s.headers.authorization, "Bearer token-1");
    assert.equal(s.headers[":path"], DEVICE_STREAM_PATH);
    assert.equal(s.stream.session?.socket?.remoteAddress, "127.0.0.1");
    req.end(Buffer.from("world"));
    await until(() => Buffer.concat(s.body).toString() === "hello world", "the body");
    await until(() => s.stream.readableEnded, "the body's end");

    const chunks: Buffer[] = [];
    let trailers: http2.IncomingHttpHeaders = {};
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("trailers", (t) => {
      trailers = t;
    });
    const ended = new Promise((resolve) => req.on("end", resolve));
    s.stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    assert.equal(s.stream.write(Buffer.from("answer")), true);
    s.stream.once("wantTrailers", () => s.stream.sendTrailers({ "grpc-status": "0" }));
    s.stream.end();
    await ended;
    assert.equal(Buffer.concat(chunks).toString(), "answer");
    assert.equal(trailers["grpc-status"], "0");
    await until(() => s.stream.closed, "the stream's close");
  });

  it("tells this thread how long the thread's reads waited for it", async () => {
    const { port, streams } = await start();
    // The device is a client on a thread of its own, so that this one can be busy while it
    // sends and the stream thread reads and hands the bytes over.
    const device = new Worker(
      `const http2 = require("node:http2");
       const { parentPort, workerData } = require("node:worker_threads");
       const session = http2.connect(workerData.url);
       session.on("error", () => {});
       session.on("connect", () => parentPort.postMessage("connected"));
       parentPort.on("message", () => {
         const req = session.request(workerData.headers);
         req.on("error", () => {});
         req.write(Buffer.from("hello"));
       });`,
      { eval: true, workerData: { url: port.url, headers: DEVICE_STREAM_HEADERS } },
    );
    try {
      await new Promise((resolve) => device.once("message", resolve));
      const served = streams.next();
      const before = streams.waits.length;
      device.postMessage("send");
      // This thread is busy for 300 ms while the device sends and the stream thread reads it.
      const busyUntil = performance.now() + 300;
      while (performance.now() < busyUntil);
      const s = await served;
      await until(() => Buffer.concat(s.body).toString() === "hello", "the body");
      const waits = streams.waits.slice(before);
      assert.ok(
        waits.some((ms) => ms >= 200 && ms < 5_000),
        `a batch read while this thread was busy waited for it: ${waits.map((ms) => ms.toFixed(1)).join(", ")} ms`,
      );
    } finally {
      await device.terminate();
    }
  });

  it("write says wait while the device does not read, and drain comes once it does", async () => {
    const { port, streams } = await start();
    const session = connect(port.url);
    const req = session.request(DEVICE_STREAM_HEADERS);
    const s = await streams.next();
    s.stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    // The client reads nothing: HTTP/2's windows (64 KiB for the stream and the connection)
    // fill, then the thread's stream buffer, and what is written here is not reported written.
    // A wait that ends while the windows still take bytes is not the one that matters: write
    // on until a wait has no drain, which must come within a bounded number of bytes.
    req.pause();
    const chunk = Buffer.alloc(16 * 1024, 7);
    let written = 0;
    let drained = false;
    s.stream.on("drain", () => {
      drained = true;
    });
    for (;;) {
      const more = s.stream.write(chunk);
      written += chunk.length;
      assert.ok(
        written < 1024 * 1024,
        `write kept taking bytes past ${written} while the device read nothing`,
      );
      if (more) {
        await new Promise((r) => setImmediate(r));
        continue;
      }
      drained = false;
      await new Promise((r) => setTimeout(r, 200));
      if (!drained) break;
    }
    let read = 0;
    req.on("data", (c: Buffer) => {
      read += c.length;
    });
    req.resume();
    await until(() => drained, "drain");
    await until(() => read === written, "every byte written");
  });

  it("answers anything but a device stream UNIMPLEMENTED (gRPC) or 404, and never hands it over", async () => {
    const { port, streams } = await start();
    const session = connect(port.url);
    const req = session.request({
      ...DEVICE_STREAM_HEADERS,
      ":path": "/switchboard.v1.AccountService/Register",
    });
    req.end();
    const headers = await new Promise<http2.IncomingHttpHeaders>((resolve) => req.on("response", resolve));
    assert.equal(headers["grpc-status"], "12");
    assert.match(decodeURIComponent(String(headers["grpc-message"])), /this port serves only/);

    const gzip = session.request({ ...DEVICE_STREAM_HEADERS, "grpc-encoding": "gzip" });
    gzip.end();
    const gzHeaders = await new Promise<http2.IncomingHttpHeaders>((resolve) => gzip.on("response", resolve));
    assert.equal(gzHeaders["grpc-status"], "12");

    const status = await new Promise<number | undefined>((resolve, reject) => {
      http
        .get(`${port.url}/healthz`, (res) => {
          res.resume();
          resolve(res.statusCode);
        })
        .on("error", reject);
    });
    assert.equal(status, 404);
    assert.equal(streams.served.length, 0);
  });

  it("keeps the edge's bounds: connections past the per-address limit are closed and counted here", async () => {
    const { port, refusals } = await start({ maxConnectionsPerAddress: 1 });
    const first = connect(port.url);
    await new Promise((resolve) => first.on("remoteSettings", resolve));
    const second = connect(port.url);
    await new Promise((resolve) => second.on("close", resolve));
    await until(() => refusals.counts.get("connections_per_address") === 1, "the refusal on this thread");
    assert.equal(first.closed, false);
  });

  it("fails its start when the port is taken, and leaves no thread behind", async () => {
    const { port } = await start();
    await assert.rejects(
      serveStreamPort({
        host: "127.0.0.1",
        port: port.port,
        limits: defaultEdgeLimits,
        streams: recorder(),
        refusals: new Refusals(createLogger({ level: "silent" })),
        log: createLogger({ level: "silent" }),
      }),
      /the stream thread stopped before it listened: .*EADDRINUSE/,
    );
  });

  it("a thread that fails takes its streams with it, and listens again on the same port", async () => {
    const { port, streams } = await start();
    const req = connect(port.url).request(DEVICE_STREAM_HEADERS);
    req.on("error", () => {});
    const s = await streams.next();
    let closed = false;
    s.stream.on("close", () => {
      closed = true;
    });
    port.crash();
    await until(() => closed, "the stream's close on the failure");
    // Started again a second later, on the same port.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const again = connect(port.url);
      const next = streams.next();
      again.request(DEVICE_STREAM_HEADERS).on("error", () => {});
      const served = await Promise.race([next, new Promise((r) => setTimeout(r, 500))]);
      if (served !== undefined) break;
      again.destroy();
      assert.ok(Date.now() < deadline, "the port did not serve again within 10 s");
    }
  });
});
