import { readFile } from "node:fs/promises";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { bundleApp } from "./bundle.js";

/** A running page server. */
export interface PageServer {
  /** The page's origin, e.g. http://127.0.0.1:8080: give it to SWITCHBOARD_CORS_ORIGINS. */
  origin: string;
  close(): Promise<void>;
}

/**
 * Serves the example page (index.html and its bundled script) over HTTP/1.1 on its own origin,
 * as a static host would: the Switchboard server is another origin, reached with CORS.
 */
export async function servePage(port = 8080, host = "127.0.0.1"): Promise<PageServer> {
  const files: Record<string, { type: string; body: string }> = {
    "/": {
      type: "text/html; charset=utf-8",
      body: await readFile(join(import.meta.dirname, "index.html"), "utf8"),
    },
    "/app.js": { type: "text/javascript; charset=utf-8", body: await bundleApp() },
  };
  const server = http.createServer((req, res) => {
    const file = files[(req.url ?? "/").split("?")[0] ?? "/"];
    if (req.method !== "GET" || file === undefined) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, { "content-type": file.type, "cache-control": "no-store" }).end(file.body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  return {
    origin: `http://${host}:${bound}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

// `npx tsx examples/web/serve.ts [port]`
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const page = await servePage(Number(process.argv[2] ?? 8080));
  console.log(`page: ${page.origin}/?server=http://127.0.0.1:7420`);
  console.log(`start the server with SWITCHBOARD_CORS_ORIGINS=${page.origin}`);
}
