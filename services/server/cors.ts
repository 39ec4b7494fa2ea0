import { cors } from "@connectrpc/connect";
import type { Refusals } from "../common/refusals.js";
import type { NodeRequest, NodeResponse } from "./edge.js";

/**
 * CORS for the device API (SWITCHBOARD_CORS_ORIGINS), with connect-es's lists of the headers
 * and methods its protocols use. A preflight from an allowed origin is answered here; one from
 * any other origin gets 403 and no CORS header, so the browser never sends the call. Answers to
 * allowed origins carry Access-Control-Allow-Origin (the origin itself, with Vary: Origin) and
 * expose the headers a web client reads: gRPC-Web's status, Connect's encodings and the
 * `retry-after-ms` hint (a trailer, sent as `trailer-retry-after-ms` on Connect unary calls).
 * Devices authenticate with a bearer token, never a cookie, so credentials are not allowed.
 */

type Handler = (req: NodeRequest, res: NodeResponse) => void;

/** Preflight answers may be cached this long by the browser, in seconds. */
const PREFLIGHT_MAX_AGE_S = 7200;

const ALLOW_HEADERS = [...cors.allowedHeaders, "Authorization"].join(", ");
const ALLOW_METHODS = cors.allowedMethods.join(", ");
const EXPOSE_HEADERS = [...cors.exposedHeaders, "Retry-After-Ms", "Trailer-Retry-After-Ms"].join(", ");

/** Wraps the port's handler with CORS for the given origins (`*` for any); none: no CORS at all. */
export function withCors(handler: Handler, origins: readonly string[], refusals: Refusals): Handler {
  if (origins.length === 0) return handler;
  const any = origins.includes("*");
  const allowed = new Set(origins);
  return (req, res) => {
    const origin = req.headers.origin;
    if (typeof origin !== "string") {
      handler(req, res);
      return;
    }
    const admitted = any || allowed.has(origin);
    const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
    if (preflight) {
      if (!admitted) {
        refusals.refuse("cors_origin", "preflight refused: origin not allowed", {
          origin: origin.slice(0, 200),
        });
        res.writeHead(403, { "content-type": "text/plain; charset=utf-8", vary: "Origin" });
        res.end(`origin not allowed: ${origin.slice(0, 200)} is not in SWITCHBOARD_CORS_ORIGINS\n`);
        return;
      }
      res.writeHead(204, {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": ALLOW_METHODS,
        "access-control-allow-headers": ALLOW_HEADERS,
        "access-control-max-age": String(PREFLIGHT_MAX_AGE_S),
        vary: "Origin",
      });
      res.end();
      return;
    }
    if (admitted) {
      res.setHeader("access-control-allow-origin", origin);
      res.setHeader("access-control-expose-headers", EXPOSE_HEADERS);
      res.setHeader("vary", "Origin");
    }
    handler(req, res);
  };
}
