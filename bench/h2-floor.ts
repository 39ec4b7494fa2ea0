/**
 * What one idle HTTP/2 connection with one open stream costs a bare node:http2 server, with none of
 * Switchboard's code: the floor under the server's memory per connected device (issue 11 asks for
 * at most 20 KB of RSS per idle stream). A child process runs the server; this process opens the
 * connections, each with one gRPC-shaped POST stream that stays open, and the server answers each
 * with its headers and a 10-byte message, as a device stream's first answer is. The server is
 * measured after a full GC at half the connections and at all of them; the second half's cost per
 * connection is the marginal one, past the heap's and malloc's one-off growth.
 *
 *   npx tsx bench/h2-floor.ts [connections] [raw|compat]
 *
 * `raw` serves the stream through node:http2's "stream" event; `compat` through the request
 * handler (Http2ServerRequest and Http2ServerResponse), as connect-node and the device stream's
 * fast path are served. Raise the open-file limit first (`ulimit -n 20000`): each connection is a
 * descriptor on each side.
 */
import { type ChildProcess, spawn } from "node:child_process";
import * as http2 from "node:http2";

const connections = Number(process.argv[2] ?? 8000);
const mode = process.argv[3] ?? "raw";
if (!Number.isInteger(connections) || connections < 2 || connections % 2 !== 0) {
  throw new Error("connections: an even number, at least 2");
}
if (mode !== "raw" && mode !== "compat") throw new Error("mode: raw or compat");

/** The server, as plain CommonJS for `node -e`: nothing of this project is loaded. */
const SERVER = `
const http2 = require("node:http2");
const mode = process.argv[1];
const server = mode === "compat"
  ? http2.createServer((req, res) => {
      res.writeHead(200, { "content-type": "application/grpc" });
      res.write(Buffer.alloc(10));
      req.on("data", () => {});
    })
  : http2.createServer();
if (mode === "raw") {
  server.on("stream", (stream) => {
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.write(Buffer.alloc(10));
    stream.on("data", () => {});
  });
}
const snapshot = () => {
  globalThis.gc();
  globalThis.gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external };
};
server.listen(0, "127.0.0.1", () => process.send({ port: server.address().port, memory: snapshot() }));
process.on("message", () => process.send({ memory: snapshot() }));
`;

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

/** The server's next report: its first (port and memory) unasked, a memory snapshot when asked. */
function report(child: ChildProcess, asked: boolean): Promise<{ port?: number; memory: Memory }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not answer in 30 s")), 30_000);
    child.once("message", (m) => {
      clearTimeout(timer);
      resolve(m as { port?: number; memory: Memory });
    });
    if (asked) child.send("snapshot");
  });
}

const child = spawn(process.execPath, ["--expose-gc", "-e", SERVER, mode], {
  stdio: ["ignore", "inherit", "inherit", "ipc"],
});
const clients: http2.ClientHttp2Session[] = [];
try {
  const start = await report(child, false);
  const url = `http://127.0.0.1:${start.port}`;
  // A device's headers: the token is about the length of a session token.
  const headers = {
    ":method": "POST",
    ":path": "/switchboard.v1.GatewayService/Connect",
    "content-type": "application/grpc",
    te: "trailers",
    authorization: `Bearer ${"t".repeat(180)}`,
  };

  /** Opens `n` connections, 200 at a time, and resolves once every stream had its answer. */
  async function open(n: number): Promise<void> {
    for (let done = 0; done < n; ) {
      const batch = Math.min(200, n - done);
      await Promise.all(
        Array.from({ length: batch }, async () => {
          const session = http2.connect(url);
          clients.push(session);
          const stream = session.request(headers);
          stream.write(Buffer.alloc(20));
          await new Promise<void>((resolve, reject) => {
            stream.once("data", () => resolve());
            stream.once("error", reject);
            session.once("error", reject);
          });
        }),
      );
      done += batch;
    }
  }

  await open(connections / 2);
  const half = await report(child, true);
  await open(connections / 2);
  const all = await report(child, true);

  const kib = (bytes: number, n: number) => (bytes / n / 1024).toFixed(2);
  const line = (what: keyof Memory) =>
    `${kib(all.memory[what] - start.memory[what], connections)} KiB per connection overall, ` +
    `${kib(all.memory[what] - half.memory[what], connections / 2)} KiB marginal (the second half)`;
  console.log(
    `node ${process.version}, nghttp2 ${process.versions.nghttp2}, ${mode}, ${connections} connections`,
  );
  console.log(`RSS        ${line("rss")}`);
  console.log(`JS heap    ${line("heapUsed")}`);
  console.log(`external   ${line("external")}`);
} finally {
  for (const session of clients) session.destroy();
  child.kill();
}
