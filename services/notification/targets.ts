import type { LookupOptions } from "node:dns";
import { lookup as dnsLookup } from "node:dns/promises";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { create } from "@bufbuild/protobuf";

/** The callback of a net lookup function (a single address). */
type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;

import type { DevicePushTarget } from "../../gen/switchboard/internal/v1/directory_pb.js";
import {
  ApnsEnvironment,
  ApnsTargetSchema,
  FcmTargetSchema,
  type SetPushTargetRequest,
  WebPushTargetSchema,
} from "../../gen/switchboard/v1/accounts_pb.js";
import { InvalidInputError } from "../common/errors.js";
import type { PushTarget } from "./types.js";

function invalid(message: string): InvalidInputError {
  return new InvalidInputError(message);
}

function base64urlBytes(field: string, value: string, length: number, first?: number): void {
  if (!/^[A-Za-z0-9_-]+={0,2}$/.test(value)) throw invalid(`${field}: base64url required`);
  const bytes = Buffer.from(value, "base64url");
  if (bytes.length !== length || (first !== undefined && bytes[0] !== first)) {
    throw invalid(
      `${field}: must encode ${length} bytes${first === 4 ? " (an uncompressed P-256 point)" : ""}`,
    );
  }
}

/**
 * Address ranges a device must never make the server call: "this network", loopback, private
 * (RFC 1918), carrier-grade NAT, link-local (cloud metadata services live at 169.254.169.254),
 * IETF protocol assignments, benchmarking, documentation, multicast and reserved; for IPv6 the
 * unspecified and loopback addresses, unique-local, link-local, site-local, multicast and
 * documentation. IPv4-mapped, IPv4-compatible, NAT64 and 6to4 addresses are judged by the IPv4
 * address they carry.
 */
const INTERNAL = (() => {
  const list = new BlockList();
  for (const [net, prefix] of [
    ["0.0.0.0", 8],
    ["10.0.0.0", 8],
    ["100.64.0.0", 10],
    ["127.0.0.0", 8],
    ["169.254.0.0", 16],
    ["172.16.0.0", 12],
    ["192.0.0.0", 24],
    ["192.0.2.0", 24],
    ["192.168.0.0", 16],
    ["198.18.0.0", 15],
    ["198.51.100.0", 24],
    ["203.0.113.0", 24],
    ["224.0.0.0", 4],
    ["240.0.0.0", 4],
  ] as const) {
    list.addSubnet(net, prefix, "ipv4");
  }
  for (const [net, prefix] of [
    ["::", 128],
    ["::1", 128],
    ["fc00::", 7],
    ["fe80::", 10],
    ["fec0::", 10],
    ["ff00::", 8],
    ["2001:db8::", 32],
    ["100::", 64],
  ] as const) {
    list.addSubnet(net, prefix, "ipv6");
  }
  return list;
})();

/** The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4), if any. */
function embeddedIpv4(address: string): string | undefined {
  const lower = address.toLowerCase();
  const dotted = /^(?:::ffff:|::|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower);
  if (dotted?.[1] !== undefined) return dotted[1];
  const hex = /^(?:::ffff:|64:ff9b::)([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(lower);
  const sixToFour = /^2002:([0-9a-f]{1,4}):([0-9a-f]{1,4})(?::|$)/.exec(lower);
  const pair = hex ?? sixToFour;
  if (pair?.[1] === undefined || pair[2] === undefined) return undefined;
  const hi = Number.parseInt(pair[1], 16);
  const lo = Number.parseInt(pair[2], 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** True for an IP address (literal) in a loopback, private, link-local or otherwise internal range. */
export function isInternalAddress(address: string): boolean {
  const host = address.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  const version = isIP(host);
  if (version === 4) return INTERNAL.check(host, "ipv4");
  if (version !== 6) return false;
  const v4 = embeddedIpv4(host);
  if (v4 !== undefined && isIP(v4) === 4) return INTERNAL.check(v4, "ipv4");
  return INTERNAL.check(host, "ipv6");
}

/**
 * True for hosts refused at registration: localhost names and internal address literals. A name
 * that resolves to an internal address is refused when a push is sent (publicOnlyLookup), since
 * what a name resolves to can change after registration.
 */
function isInternalHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  return isInternalAddress(host);
}

/** Resolves a host name to every address it has (dns.lookup with all: true by default). */
export type Resolver = (hostname: string) => Promise<Array<{ address: string; family: number }>>;

/** The system resolver, as a connection would use it. */
export const systemResolver: Resolver = (hostname) => dnsLookup(hostname, { all: true, verbatim: true });

/** The error code of a push endpoint refused because it resolves to an internal address. */
export const INTERNAL_ENDPOINT_CODE = "ERR_SWITCHBOARD_INTERNAL_ENDPOINT";

/**
 * A `lookup` for http(s).request / net.connect that resolves with `resolve` and fails when any
 * address of the name is internal. Used as the connection's own lookup, the address checked is
 * the address connected to, so a name that changes its answer between a check and the connection
 * (DNS rebinding) cannot slip through. With allowInternal, it only resolves (private push services).
 */
export function publicOnlyLookup(resolve: Resolver = systemResolver, allowInternal = false): LookupFunction {
  return ((hostname: string, options: LookupOptions, callback: LookupCallback) => {
    resolve(hostname).then(
      (addresses) => {
        const internal = allowInternal ? undefined : addresses.find((a) => isInternalAddress(a.address));
        if (addresses.length === 0 || internal !== undefined) {
          const err = Object.assign(
            new Error(
              internal === undefined
                ? `${hostname} has no address`
                : `${hostname} resolves to ${internal.address}, a loopback, private or link-local address`,
            ),
            { code: internal === undefined ? "ENOTFOUND" : INTERNAL_ENDPOINT_CODE },
          );
          callback(err, "", 0);
          return;
        }
        const wanted = options.family === 4 || options.family === 6 ? options.family : undefined;
        const usable = wanted === undefined ? addresses : addresses.filter((a) => a.family === wanted);
        if (options.all) {
          (callback as unknown as (e: null, a: Array<{ address: string; family: number }>) => void)(
            null,
            usable,
          );
          return;
        }
        const first = usable[0];
        if (first === undefined) {
          callback(
            Object.assign(new Error(`${hostname} has no IPv${wanted} address`), { code: "ENOTFOUND" }),
            "",
            0,
          );
          return;
        }
        callback(null, first.address, first.family);
      },
      (err: unknown) => callback(err as NodeJS.ErrnoException, "", 0),
    );
  }) as unknown as LookupFunction;
}

/**
 * Checks a device's requested push target. Web Push endpoints must be public https URLs; plain
 * http and local or private addresses only where the operator allows them (tests, a private push
 * service on a trusted network).
 */
export function targetFromRequest(req: SetPushTargetRequest, allowHttp: boolean): PushTarget {
  const t = req.target;
  switch (t.case) {
    case "webPush": {
      let url: URL;
      try {
        url = new URL(t.value.endpoint);
      } catch {
        throw invalid("web_push.endpoint: not a URL");
      }
      if (t.value.endpoint.length > 2048) throw invalid("web_push.endpoint: at most 2,048 characters");
      if (url.protocol !== "https:" && !(allowHttp && url.protocol === "http:")) {
        throw invalid("web_push.endpoint: must be an https URL");
      }
      if (!allowHttp && isInternalHost(url.hostname)) {
        throw invalid("web_push.endpoint: must be a public push service, not a local or private address");
      }
      base64urlBytes("web_push.p256dh", t.value.p256dh, 65, 4);
      base64urlBytes("web_push.auth", t.value.auth, 16);
      return { kind: "webpush", endpoint: t.value.endpoint, p256dh: t.value.p256dh, auth: t.value.auth };
    }
    case "fcm":
      if (!/^[A-Za-z0-9_:\-.]{1,4096}$/.test(t.value.token))
        throw invalid("fcm.token: 1 to 4,096 token characters");
      return { kind: "fcm", token: t.value.token };
    case "apns": {
      if (!/^[0-9a-fA-F]{64,200}$/.test(t.value.token)) throw invalid("apns.token: 64 to 200 hex characters");
      if (!/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(t.value.topic) || t.value.topic.length > 255) {
        throw invalid("apns.topic: the app's bundle id (for example com.example.chat)");
      }
      if (t.value.environment === ApnsEnvironment.UNSPECIFIED) throw invalid("apns.environment: required");
      return {
        kind: "apns",
        token: t.value.token.toLowerCase(),
        topic: t.value.topic,
        environment: t.value.environment === ApnsEnvironment.SANDBOX ? "sandbox" : "production",
      };
    }
    default:
      throw invalid("target: web_push, fcm or apns required");
  }
}

/** The wire form of a stored target. */
export function targetToWire(target: PushTarget): DevicePushTarget["target"] {
  switch (target.kind) {
    case "webpush":
      return {
        case: "webPush",
        value: create(WebPushTargetSchema, {
          endpoint: target.endpoint,
          p256dh: target.p256dh,
          auth: target.auth,
        }),
      };
    case "fcm":
      return { case: "fcm", value: create(FcmTargetSchema, { token: target.token }) };
    case "apns":
      return {
        case: "apns",
        value: create(ApnsTargetSchema, {
          token: target.token,
          topic: target.topic,
          environment:
            target.environment === "sandbox" ? ApnsEnvironment.SANDBOX : ApnsEnvironment.PRODUCTION,
        }),
      };
  }
}

/** A stored target from its wire form (already validated when it was registered). */
export function targetFromWire(wire: DevicePushTarget["target"]): PushTarget | undefined {
  switch (wire.case) {
    case "webPush":
      return {
        kind: "webpush",
        endpoint: wire.value.endpoint,
        p256dh: wire.value.p256dh,
        auth: wire.value.auth,
      };
    case "fcm":
      return { kind: "fcm", token: wire.value.token };
    case "apns":
      return {
        kind: "apns",
        token: wire.value.token,
        topic: wire.value.topic,
        environment: wire.value.environment === ApnsEnvironment.SANDBOX ? "sandbox" : "production",
      };
    default:
      return undefined;
  }
}
