import type * as http from "node:http";
import type * as http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import type { Refusals } from "../common/refusals.js";

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
 * Rewrites the error Connect writes for two cases it gets wrong for this server's clients: a
 * request it cannot parse is INVALID_ARGUMENT with no parser detail (Connect says INTERNAL
 * "parse binary: premature EOF"), and grpc-message is escaped as the gRPC specification says.
 * gRPC carries the status in headers or trailers, Connect's unary protocol in a JSON body.
 */
export function fixErrorEncoding(
  req: NodeRequest,
  res: NodeResponse,
  procedure: string,
  refusals: Refusals,
  address: () => string,
): void {
  const contentType = String(req.headers["content-type"] ?? "");
  const fixStatus = (headers: http2.OutgoingHttpHeaders): void => {
    const raw = headers["grpc-message"];
    if (typeof raw !== "string") return;
    let message = decodeGrpcMessage(raw);
    if (headers["grpc-status"] === String(Code.Internal) && PARSE_FAILURE.test(message)) {
      headers["grpc-status"] = String(Code.InvalidArgument);
      message = malformed(procedure);
      refusals.refuse("malformed_request", message, {
        address: address(),
        procedure,
        code: "invalid_argument",
      });
    }
    headers["grpc-message"] = encodeGrpcMessage(message);
  };
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
    // gRPC-Web carries the status in a trailer frame at the end of the body. An answer that
    // starts with a message is a success so far and passes through as it comes (a Subscribe
    // stream lasts for hours: holding it would hold everything it sends); one that starts with
    // the trailer frame is an error, held until its end and that frame rewritten.
    const write = res.write.bind(res) as (...args: unknown[]) => boolean;
    const end = res.end.bind(res) as (...args: unknown[]) => http2.Http2ServerResponse;
    const chunks: Buffer[] = [];
    let passing = false;
    res.write = ((chunk: unknown, ...rest: unknown[]) => {
      if (passing) return write(chunk, ...rest);
      chunks.push(Buffer.from(chunk as Uint8Array));
      const first = chunks[0]![0];
      if (first === undefined || (first & 0x80) !== 0) return true;
      passing = true;
      return write(Buffer.concat(chunks.splice(0)));
    }) as typeof res.write;
    res.end = ((...args: unknown[]) => {
      if (passing) return end(...args);
      if (args[0] instanceof Uint8Array || typeof args[0] === "string") chunks.push(Buffer.from(args[0]));
      const body = rewriteGrpcWebTrailers(Buffer.concat(chunks), fixStatus);
      if (body.length > 0) write(body);
      return end();
    }) as typeof res.end;
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
            address: address(),
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
  const out: Buffer[] = [];
  let offset = 0;
  while (offset + 5 <= body.length) {
    const flags = body[offset]!;
    const length = body.readUInt32BE(offset + 1);
    const end = offset + 5 + length;
    if (end > body.length) break;
    if ((flags & 0x80) === 0) {
      out.push(body.subarray(offset, end));
    } else {
      const headers: http2.OutgoingHttpHeaders = {};
      for (const line of body
        .subarray(offset + 5, end)
        .toString("latin1")
        .split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
      }
      fix(headers);
      const text = Buffer.from(
        Object.entries(headers)
          .map(([k, v]) => `${k}: ${String(v)}\r\n`)
          .join(""),
        "latin1",
      );
      const head = Buffer.alloc(5);
      head[0] = flags;
      head.writeUInt32BE(text.length, 1);
      out.push(head, text);
    }
    offset = end;
  }
  if (offset < body.length) out.push(body.subarray(offset));
  return Buffer.concat(out);
}
