import type * as http2 from "node:http2";
import { GatewayService } from "../../gen/switchboard/v1/gateway_pb.js";

/**
 * Which requests the device stream's fast path serves, by their headers alone: a module of its
 * own so that a stream thread (stream-thread.ts) can tell them without loading the gateway.
 */

/** The device stream's path. */
export const DEVICE_STREAM_PATH = `/${GatewayService.typeName}/${GatewayService.method.connect.name}`;
/** gRPC's binary content types; JSON and the other protocols go to connect-node. */
const GRPC_PROTO = /^application\/grpc(\+proto)?$/;

/** True for the device stream over gRPC with uncompressed messages, not from a browser. */
export function isGrpcDeviceStream(headers: http2.IncomingHttpHeaders): boolean {
  if (headers[":path"] !== DEVICE_STREAM_PATH || headers[":method"] !== "POST") return false;
  if (!GRPC_PROTO.test(String(headers["content-type"] ?? ""))) return false;
  if (headers.origin !== undefined || headers.expect !== undefined) return false;
  const encoding = headers["grpc-encoding"];
  return encoding === undefined || encoding === "identity";
}

/** A request header as one value (repeated ones joined with commas), or null when absent. */
export function header(headers: http2.IncomingHttpHeaders, name: string): string | null {
  const value = headers[name];
  return value === undefined ? null : Array.isArray(value) ? value.join(",") : value;
}
