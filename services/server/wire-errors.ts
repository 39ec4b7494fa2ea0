import type * as http from "node:http";
import type * as http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import type { RefusalSink } from "../common/refusals.js";

/** A request on either protocol of the port (front-door.ts): HTTP/2 (h2c) or HTTP/1.1. */
export type NodeRequest = http2.Http2ServerRequest | http.IncomingMessage;
/** Its response. */
export type NodeResponse = http2.Http2ServerResponse | http.ServerResponse;

/**
 * The wire form of errors, fixed where Connect's differs from what this server's clients read
 * (edge.ts applies it to every request before Connect sees it).
 */
/**
 * Percent-encodes a grpc-message value as the gRPC HTTP/2 specification says: only bytes
 * outside printable ASCII, and "%" itself. Connect escapes with encodeURIComponent, which also
 * escapes ":", ";" and ","; grpc-js decodes with decodeURI, which leaves those escaped, so stock
 * grpc-js clients read "rate limit%3A ...". Any decoder of either kind reads this form right.
 */
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const byte of Buffer.from(message, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function decodeGrpcMessage(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** Connect reports a request it cannot parse as INTERNAL "parse binary: <parser detail>". */
const PARSE_FAILURE = /^(parse binary|parse json|protocol error)/;

function malformed(procedure: string): string {
  return `malformed request: not a valid ${procedure.split("/").pop() ?? "request"} message`;
}

/**
 * Fixes a gRPC status written in Connect's form, in place: a request Connect could not parse is
 * INVALID_ARGUMENT "malformed request" (refused and logged as such), and grpc-message is escaped
 * as the gRPC specification says (encodeGrpcMessage). `address` is the caller's, for the log.
 */
export function fixGrpcStatus(
  headers: http2.OutgoingHttpHeaders,
  procedure: string,
  refusals: RefusalSink,
  address: string,
): void {
  const raw = headers["grpc-message"];
  if (typeof raw !== "string") return;
  let message = decodeGrpcMessage(raw);
  if (headers["grpc-status"] === String(Code.Internal) && PARSE_FAILURE.test(message)) {
    headers["grpc-status"] = String(Code.InvalidArgument);
    message = malformed(procedure);
    refusals.refuse("malformed_request", message, {
      address,
      procedure,
      code: "invalid_argument",
    });
  }
  headers["grpc-message"] = encodeGrpcMessage(message);
}

/**
 * Rewrites the error Connect writes for two cases it gets wrong for this server's clients: a
 * request it cannot parse is INVALID_ARGUMENT with no parser detail (Connect says INTERNAL
 * "parse binary: premature EOF"), and grpc-message is escaped as the gRPC specification says.
 * gRPC carries the status in headers or trailers, Connect's unary protocol in a JSON body.
 */
export function fixErrorEncoding(
  req: NodeRequest,
  res: NodeResponse,
  procedure: string,
  refusals: RefusalSink,
  address: string,
): void {
  const contentType = String(req.headers["content-type"] ?? "");
  const fixStatus = (headers: http2.OutgoingHttpHeaders): void =>
    fixGrpcStatus(headers, procedure, refusals, address);
  if (contentType.startsWith("application/grpc") && !contentType.startsWith("application/grpc-web")) {
    const writeHead = res.writeHead.bind(res) as (...args: unknown[]) => http2.Http2ServerResponse;
    res.writeHead = ((...args: unknown[]) => {
      const headers = args[args.length - 1];
      if (typeof headers === "object" && headers !== null) fixStatus(headers as http2.OutgoingHttpHeaders);
      return writeHead(...args);
    }) as typeof res.writeHead;
    const addTrailers = res.addTrailers.bind(res);
    res.addTrailers = (trailers: http2.OutgoingHttpHeaders) => {
      fixStatus(trailers);
      addTrailers(trailers);
    };
    return;
  }
  if (contentType.startsWith("application/grpc-web")) {
    // gRPC-Web carries the status in a trailer frame (flag 0x80) at the end of the body.
    holdErrorAnswer(res, 0x80, (body) => rewriteGrpcWebTrailers(body, fixStatus));
    return;
  }
  if (contentType.startsWith("application/connect+")) {
    // Connect's streaming protocol: the status is the end-stream message (flag 0x02), JSON.
    holdErrorAnswer(res, 0x02, (body) =>
      rewriteEnvelopes(body, 0x02, (json) => {
        const parsed = JSON.parse(json) as { error?: { code?: string; message?: string } };
        if (parsed.error?.code !== "internal" || !PARSE_FAILURE.test(parsed.error.message ?? "")) return json;
        const message = malformed(procedure);
        refusals.refuse("malformed_request", message, {
          address,
          procedure,
          code: "invalid_argument",
        });
        return JSON.stringify({ ...parsed, error: { code: "invalid_argument", message } });
      }),
    );
    return;
  }
  if (contentType === "application/proto" || contentType === "application/json") {
    // Connect's unary protocol: an error is a JSON body with a non-200 status.
    const writeHead = res.writeHead.bind(res) as (...args: unknown[]) => http2.Http2ServerResponse;
    let buffering = false;
    const chunks: Buffer[] = [];
    res.writeHead = ((...args: unknown[]) => {
      buffering = args[0] === 500;
      if (buffering) return res;
      return writeHead(...args);
    }) as typeof res.writeHead;
    const write = res.write.bind(res) as (...args: unknown[]) => boolean;
    res.write = ((chunk: unknown, ...rest: unknown[]) => {
      if (!buffering) return write(chunk, ...rest);
      chunks.push(Buffer.from(chunk as Uint8Array));
      return true;
    }) as typeof res.write;
    const end = res.end.bind(res) as (...args: unknown[]) => http2.Http2ServerResponse;
    res.end = ((...args: unknown[]) => {
      if (!buffering) return end(...args);
      buffering = false;
      if (args[0] instanceof Uint8Array || typeof args[0] === "string") chunks.push(Buffer.from(args[0]));
      let status = 500;
      let body = Buffer.concat(chunks);
      try {
        const parsed = JSON.parse(body.toString("utf8")) as { code?: string; message?: string };
        if (parsed.code === "internal" && PARSE_FAILURE.test(parsed.message ?? "")) {
          status = 400;
          const message = malformed(procedure);
          body = Buffer.from(JSON.stringify({ code: "invalid_argument", message }));
          refusals.refuse("malformed_request", message, {
            address,
            procedure,
            code: "invalid_argument",
          });
        }
      } catch {
        // Not JSON: pass it through unchanged.
      }
      writeHead(status, { "content-type": "application/json" });
      return end(body);
    }) as typeof res.end;
  }
}

/** Applies fix to the status in a gRPC-Web body's trailer frame (flag 0x80), leaving the rest as is. */
function rewriteGrpcWebTrailers(body: Buffer, fix: (headers: http2.OutgoingHttpHeaders) => void): Buffer {
  return rewriteEnvelopes(body, 0x80, (text) => {
    const headers: http2.OutgoingHttpHeaders = {};
    for (const line of text.split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    fix(headers);
    return Object.entries(headers)
      .map(([k, v]) => `${k}: ${String(v)}\r\n`)
      .join("");
  });
}

/**
 * Holds an enveloped answer (gRPC-Web, Connect streaming) while it starts with its end frame
 * (`endFlag`): such an answer is an error, rewritten whole at its end. One that starts with a
 * message is a success so far and passes through as it comes (a Subscribe stream lasts for
 * hours: holding it would hold everything it sends). Write callbacks are called either way.
 */
function holdErrorAnswer(res: NodeResponse, endFlag: number, rewrite: (body: Buffer) => Buffer): void {
  const write = res.write.bind(res) as (...args: unknown[]) => boolean;
  const end = res.end.bind(res) as (...args: unknown[]) => NodeResponse;
  const chunks: Buffer[] = [];
  let passing = false;
  const callbackIn = (args: unknown[]) =>
    args.find((a) => typeof a === "function") as (() => void) | undefined;
  res.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (passing) return write(chunk, ...rest);
    chunks.push(Buffer.from(chunk as Uint8Array));
    const first = chunks[0]![0];
    if (first === undefined || (first & endFlag) !== 0) {
      const callback = callbackIn(rest);
      if (callback !== undefined) process.nextTick(callback);
      return true;
    }
    passing = true;
    return write(Buffer.concat(chunks.splice(0)), ...rest);
  }) as typeof res.write;
  res.end = ((...args: unknown[]) => {
    if (passing) return end(...args);
    if (args[0] instanceof Uint8Array || typeof args[0] === "string") chunks.push(Buffer.from(args[0]));
    const held = Buffer.concat(chunks);
    let body: Buffer = held;
    try {
      body = rewrite(held);
    } catch {
      // A body that is not what Connect writes goes out as it is.
    }
    if (body.length > 0) write(body);
    const callback = callbackIn(args);
    return callback === undefined ? end() : end(callback);
  }) as typeof res.end;
}

/** Applies fix to the text of every envelope with `flag` in a body, leaving the rest as is. */
function rewriteEnvelopes(body: Buffer, flag: number, fix: (text: string) => string): Buffer {
  const out: Buffer[] = [];
  let offset = 0;
  while (offset + 5 <= body.length) {
    const flags = body[offset]!;
    const end = offset + 5 + body.readUInt32BE(offset + 1);
    if (end > body.length) break;
    if ((flags & flag) === 0) {
      out.push(body.subarray(offset, end));
    } else {
      let text = body.subarray(offset + 5, end).toString("utf8");
      try {
        text = fix(text);
      } catch {
        // Not what Connect writes: passed through unchanged.
      }
      const payload = Buffer.from(text, "utf8");
      const head = Buffer.alloc(5);
      head[0] = flags;
      head.writeUInt32BE(payload.length, 1);
      out.push(head, payload);
    }
    offset = end;
  }
  if (offset < body.length) out.push(body.subarray(offset));
  return Buffer.concat(out);
}
