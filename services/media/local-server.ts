import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "../common/log.js";
import { localObjectsHttpHandler } from "./handler.js";
import { LocalObjectStore } from "./local.js";
import type { MediaEngine } from "./types.js";

/** What the local engine needs: its directory and where its HTTP server listens. */
export interface LocalMediaOptions {
  /** The directory of objects and records. */
  dir: string;
  /** Address the HTTP/1.1 server of the presigned URLs listens on. */
  host: string;
  /** Its port (0: any free port). */
  port: number;
  /** Base URL devices use to reach that server; undefined: derived from host and bound port. */
  publicBaseUrl: string | undefined;
  /** URL signing key, at least 32 bytes. */
  urlKey: Uint8Array;
}

/**
 * The local engine with the HTTP server of its presigned URLs. The server listens first, since
 * the URLs name its bound port when no public URL is configured; until the store is open it
 * answers 503.
 */
export async function openLocalMedia(options: LocalMediaOptions, log: Logger): Promise<MediaEngine> {
  let local: LocalObjectStore | undefined;
  const server = http.createServer((req, res) => {
    if (local === undefined) {
      res.writeHead(503, { "content-type": "text/plain", connection: "close" }).end("starting\n");
      return;
    }
    localObjectsHttpHandler(local, log)(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host;
  const objectsUrl = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  try {
    local = await LocalObjectStore.open({
      dir: options.dir,
      publicBaseUrl: options.publicBaseUrl ?? objectsUrl,
      urlKey: options.urlKey,
    });
  } catch (err) {
    server.close();
    throw err;
  }
  return {
    store: local,
    objectsUrl,
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      // Uploads in flight get a moment to finish; then their connections go.
      const force = setTimeout(() => server.closeAllConnections(), 2000);
      await closed;
      clearTimeout(force);
    },
  };
}
