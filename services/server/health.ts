import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { Telemetry } from "../common/telemetry.js";
import type { Closers } from "./lifecycle.js";
import { type HttpFallback, hostForUrl, listen } from "./network.js";

/**
 * Health and readiness: /healthz (the process answers) and /readyz (it should be sent work),
 * on the main port and on the admin port, which also serves /metrics.
 */

/** The main port's answer to anything that is not an RPC: /healthz, /readyz, else 404. */
export function healthFallback(problems: () => string[]): HttpFallback {
  return (req, res) => {
    if (req.url === "/healthz" || req.url === "/readyz") {
      const found = req.url === "/readyz" ? problems() : [];
      res.writeHead(found.length === 0 ? 200 : 503, { "content-type": "text/plain" });
      res.end(found.length === 0 ? "ok\n" : `${found.join("\n")}\n`);
      return;
    }
    res.writeHead(404);
    res.end();
  };
}

/**
 * Starts the admin server (/healthz, /readyz, /metrics) on its own port; returns its URL.
 * Kubernetes probes speak HTTP/1.1, which an h2c server cannot answer.
 */
export async function startAdminServer(options: {
  port: number;
  host: string;
  telemetry: Telemetry;
  problems: () => string[];
  closers: Closers;
}): Promise<string> {
  const { telemetry, problems } = options;
  const admin = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    } else if (path === "/metrics") {
      telemetry.metricsHandler(req, res);
    } else if (path === "/readyz") {
      const found = problems();
      res
        .writeHead(found.length === 0 ? 200 : 503, { "content-type": "text/plain" })
        .end(found.length === 0 ? "ok\n" : `${found.join("\n")}\n`);
    } else {
      res.writeHead(404).end();
    }
  });
  await listen(admin, options.port, options.host);
  const url = `http://${hostForUrl(options.host)}:${(admin.address() as AddressInfo).port}`;
  options.closers.add("admin server", () => new Promise<void>((resolve) => admin.close(() => resolve())));
  return url;
}
