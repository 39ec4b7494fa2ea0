import type * as http2 from "node:http2";
import { BlockList, isIP } from "node:net";

/**
 * The header that carries the caller's network address from the edge to the accounts service.
 * The edge (every public server of a process) deletes whatever a client sent under this name and
 * sets it from the TCP socket, so the accounts service can key per-address limits on it; gateways
 * pass it on when they forward AccountService calls.
 */
export const PEER_HEADER = "x-switchboard-peer";

/** The address used when a call carries none (an in-process call made by a test or a tool). */
export const UNKNOWN_PEER = "unknown";

/** Expands an IPv6 address to its eight hextets. */
function hextets(address: string): string[] {
  const [head = "", tail] = address.split("::");
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? 0 : 8 - left.length - right.length;
  return [...left, ...Array.from({ length: fill }, () => "0"), ...right].map((h) =>
    h.toLowerCase().padStart(4, "0"),
  );
}

/**
 * The key an address is limited under: an IPv4 address as is (an IPv4-mapped IPv6 address as its
 * IPv4 form), an IPv6 address by its /64 prefix, since one subscriber commonly holds a whole /64
 * and could otherwise rotate through 2^64 addresses.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1] !== undefined) return mapped[1];
  if (isIP(address) === 6 && !address.includes(".")) return `${hextets(address).slice(0, 4).join(":")}::/64`;
  return address;
}

/**
 * The caller's address: the socket's peer, or, only when that peer is one of `trustedProxies`,
 * the right-most X-Forwarded-For entry that is not itself a trusted proxy (entries further left
 * are written by the client and prove nothing).
 */
export function callerAddress(
  socketAddress: string | undefined,
  forwardedFor: string | undefined,
  trustedProxies: BlockList | undefined,
): string {
  const socket = socketAddress ?? UNKNOWN_PEER;
  if (trustedProxies === undefined || forwardedFor === undefined || !isTrusted(trustedProxies, socket)) {
    return socket;
  }
  const hops = forwardedFor
    .split(",")
    .map((h) => h.trim())
    .filter((h) => isIP(h) !== 0);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i]!;
    if (!isTrusted(trustedProxies, hop)) return hop;
  }
  return hops[0] ?? socket;
}

function isTrusted(list: BlockList, address: string): boolean {
  const v = isIP(address);
  if (v === 0) return false;
  const plain = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  return plain !== undefined ? list.check(plain, "ipv4") : list.check(address, v === 4 ? "ipv4" : "ipv6");
}

/** Parses trusted proxies: addresses or CIDR ranges ("10.0.0.0/8", "fd00::/8"). */
export function trustedProxyList(entries: readonly string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const entry of entries) {
    const [address = "", prefix] = entry.split("/");
    const v = isIP(address);
    if (v === 0) throw new Error(`not an IP address or CIDR range: "${entry}"`);
    const type = v === 4 ? "ipv4" : "ipv6";
    if (prefix === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(prefix), type);
  }
  return list;
}

/**
 * Wraps the public server's request handler so that every request carries the caller's address
 * in PEER_HEADER, taken from the socket (or a trusted proxy's X-Forwarded-For), never from the
 * client. A request that carries the deployment's internal credential comes from another
 * Switchboard process (a gateway forwarding a device's call) and keeps the address that process
 * set; `isInternal` checks that credential.
 */
export function withPeerAddress<
  Req extends { headers: http2.IncomingHttpHeaders; socket?: { remoteAddress?: string | undefined } },
  Res,
>(
  handler: (req: Req, res: Res) => void,
  options: { trustedProxies: BlockList | undefined; isInternal: (header: string | undefined) => boolean },
): (req: Req, res: Res) => void {
  return (req, res) => {
    const headers = req.headers;
    const internal = options.isInternal(single(headers["x-switchboard-internal"]));
    if (!internal || headers[PEER_HEADER] === undefined) {
      headers[PEER_HEADER] = callerAddress(
        req.socket?.remoteAddress,
        single(headers["x-forwarded-for"]),
        options.trustedProxies,
      );
    }
    handler(req, res);
  };
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(",") : value;
}
