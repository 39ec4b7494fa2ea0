import { isIP } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DevicePushTarget } from "../../gen/switchboard/internal/v1/directory_pb.js";
import { ApnsEnvironment, type SetPushTargetRequest } from "../../gen/switchboard/v1/accounts_pb.js";
import type { PushTarget } from "./types.js";

function invalid(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
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
 * True for hosts a device must not make the server call: loopback, private, link-local and
 * unique-local addresses written as literals, and localhost. (A name that resolves to such an
 * address is the deployment's egress policy's job; see docs/push.md.)
 */
function isInternalHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  const version = isIP(host);
  if (version === 4) {
    const [a = 0, b = 0] = host.split(".").map(Number);
    return (
      a === 127 ||
      a === 10 ||
      a === 0 ||
      (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168) ||
      (a === 169 && b === 254) ||
      (a === 100 && b >= 64 && b <= 127)
    );
  }
  if (version === 6) {
    return (
      host === "::1" ||
      host === "::" ||
      /^f[cd]/.test(host) ||
      /^fe[89ab]/.test(host) ||
      host.startsWith("::ffff:")
    );
  }
  return false;
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
        value: {
          $typeName: "switchboard.v1.WebPushTarget",
          endpoint: target.endpoint,
          p256dh: target.p256dh,
          auth: target.auth,
        },
      };
    case "fcm":
      return { case: "fcm", value: { $typeName: "switchboard.v1.FcmTarget", token: target.token } };
    case "apns":
      return {
        case: "apns",
        value: {
          $typeName: "switchboard.v1.ApnsTarget",
          token: target.token,
          topic: target.topic,
          environment:
            target.environment === "sandbox" ? ApnsEnvironment.SANDBOX : ApnsEnvironment.PRODUCTION,
        },
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
