import { timingSafeEqual } from "node:crypto";
import type * as http2 from "node:http2";
import type * as net from "node:net";
import type { AddressInfo } from "node:net";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { type ConnectNodeAdapterOptions, connectNodeAdapter } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/switchboard/internal/v1/admin_pb.js";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { type Accounts, trustedProxyList, withPeerAddress } from "../accounts/index.js";
import { adminService } from "../admin/index.js";
import { errorBoundary, wireErrors } from "../common/boundary.js";
import { gatewayReadMaxBytes, ROLES } from "../common/config.js";
import { requireInternalCredential } from "../common/internal-auth.js";
import { serverTelemetry, streamErrorCounter } from "../common/rpc-telemetry.js";
import {
  accountForwarder,
  authInterceptor,
  CallService,
  ConversationService,
  callService,
  conversationService,
  type GatewayCore,
  GatewayService,
  gatewayService,
  keyForwarder,
  mediaForwarder,
  principal,
} from "../gateway/index.js";
import type { StartedMedia } from "../media/index.js";
import type { Notifier } from "../notification/index.js";
import type { Presence } from "../presence/index.js";
import type { Sequencer } from "../sequencer/index.js";
import { withCors } from "./cors.js";
import { deviceStreams } from "./device-stream.js";
import { answerStreamProcedures, EdgeGuard, streamingProcedures } from "./edge.js";
import { frontDoor } from "./front-door.js";
import { INTERNAL_READ_MAX_BYTES } from "./grpc-wire.js";
import { internalUnaryFastPath } from "./internal-unary.js";
import type { Closers } from "./lifecycle.js";
import { directoryClient, type RoleContext } from "./roles.js";
import { serveStreamPort } from "./stream-threads.js";

/** What the RPC handler does with a request that is not an RPC (health.ts: probes). */
export type HttpFallback = NonNullable<ConnectNodeAdapterOptions["fallback"]>;

/** What the network face serves: the managers of this process's roles, each unset when it does not run that role. */
export interface NetworkParts {
  ctx: RoleContext;
  gateway: GatewayCore | undefined;
  media: StartedMedia | undefined;
  accounts: Accounts | undefined;
  presence: Presence | undefined;
  sequencer: Sequencer | undefined;
  notifier: Notifier | undefined;
  /** The internal credential every internal service requires; set whenever the process serves. */
  internalGuard: string | undefined;
  /** When the process started, in milliseconds since the Unix epoch (AdminService.GetStats). */
  startedAtMs: number;
  /** Turns readiness false (AdminService.DrainGateway). */
  markNotReady: () => void;
  /** Answers what is not an RPC (health and readiness). */
  fallback: HttpFallback;
}

/**
 * The network face: the device API on a gateway, and the local services other processes call,
 * behind the edge guard on one cleartext port that speaks HTTP/2 (h2c) and HTTP/1.1 (for
 * browsers; front-door.ts), with CORS for the configured web origins. Returns the bound URL and
 * port.
 */
export async function serveNetwork(
  parts: NetworkParts,
): Promise<{ url: string; port: number; streamUrl: string | undefined }> {
  const { ctx, gateway, media, internalGuard } = parts;
  const { config, roles, clients, refusals, closers, log } = ctx;
  const mesh = config.mesh;
  // In one process the services call each other in memory; nothing internal is on the network.
  const everything = roles.size === ROLES.length;
  const directoryAccounts = () => clients.clientOf(AccountService, roles.has("accounts"), mesh.urls.accounts);
  // The boundary is outermost so that it also sees what authentication throws.
  const interceptors = [
    serverTelemetry(),
    errorBoundary(log, refusals),
    ...(internalGuard ? [requireInternalCredential(internalGuard)] : []),
  ];
  // From devices a frame carries one payload plus ids, so anything much larger is refused
  // before parsing. Internal batches (appends, deliveries) carry many payloads at once.
  const readMaxBytes = gateway ? gatewayReadMaxBytes(config.limits) : INTERNAL_READ_MAX_BYTES;
  const handler = connectNodeAdapter({
    routes: (router) => {
      if (gateway) {
        router.service(GatewayService, gatewayService(gateway));
        router.service(
          ConversationService,
          conversationService(gateway, directoryClient(ctx), config.limits.maxGroupSize),
        );
        // TURN credentials for calls, signed here with the secret the relays share.
        router.service(CallService, callService(config.calls.turn, principal));
        // Devices reach the account API through their gateway, which forwards it as is.
        router.service(AccountService, accountForwarder(directoryAccounts(), gateway));
        router.service(
          KeyService,
          keyForwarder(clients.clientOf(KeyService, roles.has("accounts"), mesh.urls.accounts)),
        );
        // Attachments: served here, or forwarded to the media service when it runs elsewhere.
        if (!media && mesh.urls.media !== undefined) {
          router.service(
            MediaService,
            mediaForwarder(createClient(MediaService, clients.remote(mesh.urls.media))),
          );
        }
      }
      // A public service that authenticates devices itself.
      if (media) router.service(MediaService, media.service);
      if (internalGuard) {
        router.service(
          AdminService,
          adminService({
            instanceId: mesh.instanceId,
            roles: mesh.roles,
            startedAtMs: parts.startedAtMs,
            gateway,
            accounts: parts.accounts,
            presence: parts.presence,
            sequencer: parts.sequencer,
            notifier: parts.notifier,
            markNotReady: parts.markNotReady,
            // Operator actions are audited in the process log.
            log: ctx.log,
          }),
        );
      }
      if (!everything) {
        for (const { service, register } of clients.local) {
          if (!(gateway && (service === AccountService || service === KeyService))) register(router);
        }
      }
    },
    readMaxBytes,
    interceptors: [
      ...interceptors,
      // Internal services carry the internal credential, not a device token.
      ...(gateway ? [exceptInternal(authInterceptor(gateway))] : []),
    ],
    fallback: parts.fallback,
  });

  const edge = new EdgeGuard(
    config.edge,
    refusals,
    streamingProcedures([GatewayService]),
    internalGuard,
    answerStreamProcedures([GatewayService]),
  );
  // Every request carries the caller's address from the socket (PEER_HEADER), for per-address
  // limits behind the gateway; only a call with the internal credential may bring its own.
  const expectedInternal = internalGuard === undefined ? undefined : Buffer.from(internalGuard);
  // Other processes' unary calls over gRPC skip connect-node's pipeline (internal-unary.ts).
  const internal = everything
    ? handler
    : internalUnaryFastPath(handler, { services: clients.local, interceptors, readMaxBytes });
  // The device stream over gRPC skips node:http2's compatibility layer and connect-node's stream
  // pipeline (device-stream.ts): the front door hands it over before either sees it.
  const direct = gateway
    ? deviceStreams({
        gateway,
        readMaxBytes: gatewayReadMaxBytes(config.limits),
        wireErrors: wireErrors(log, refusals),
        streamErrors: streamErrorCounter(),
        refusals,
      })
    : undefined;
  const peerAware = withPeerAddress(internal, {
    trustedProxies: trustedProxyList(config.accountLimits.trustedProxies),
    isInternal: (given) => {
      if (expectedInternal === undefined || given === undefined) return false;
      const bytes = Buffer.from(given);
      return bytes.length === expectedInternal.length && timingSafeEqual(bytes, expectedInternal);
    },
  });
  // CORS outermost, so the edge's own refusals reach a browser readable.
  const door = frontDoor(
    withCors(edge.wrap(peerAware), config.web.corsOrigins, refusals),
    edge,
    config.edge,
    direct,
  );
  const sessions = new Set<http2.ServerHttp2Session>();
  door.h2.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await listen(door.server, config.port, config.host);
  const port = (door.server.address() as AddressInfo).port;
  const url = `http://${hostForUrl(config.host)}:${port}`;
  closeServer(closers, door, sessions);
  let streamUrl: string | undefined;
  if (config.streamPort !== undefined) {
    if (direct === undefined) {
      log.warn(
        { streamPort: config.streamPort },
        "SWITCHBOARD_STREAM_PORT is set, but this process runs no gateway",
      );
    } else {
      // Device streams on a thread of their own as well (stream-threads.ts). Closed before the
      // main port (closers run last-added first), after the gateway's drain has ended them.
      const streamPort = await serveStreamPort({
        host: config.host,
        port: config.streamPort,
        limits: config.edge,
        streams: direct,
        refusals,
        log,
      });
      streamUrl = streamPort.url;
      closers.add("stream port", () => streamPort.close());
    }
  }
  return { url, port, streamUrl };
}

/** Registers the port's shutdown: stop accepting, close its connections, destroy stragglers after 2 s. */
function closeServer(
  closers: Closers,
  door: ReturnType<typeof frontDoor>,
  sessions: Set<http2.ServerHttp2Session>,
): void {
  closers.add("server", async () => {
    // Resolves once every connection the port accepted has closed, on either protocol.
    const closed = new Promise<void>((resolve) => door.server.close(() => resolve()));
    // Streams ended when the gateway drained; give their last frames a moment, then close.
    for (const s of sessions) s.close();
    // Stops its timeout checks and closes its idle keep-alive connections.
    door.h1.close();
    const force = setTimeout(() => {
      for (const s of sessions) s.destroy();
      door.h1.closeAllConnections();
    }, 2000);
    await closed;
    clearTimeout(force);
  });
}

/** Runs an interceptor for every service except the internal ones (switchboard.internal.*). */
function exceptInternal(interceptor: Interceptor): Interceptor {
  return (next) => {
    const intercepted = interceptor(next);
    return (req) => (req.service.typeName.startsWith("switchboard.internal.") ? next(req) : intercepted(req));
  };
}

/** A host as it appears in a URL (IPv6 literals in brackets). */
export function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** Listens on port and host; rejects when the port cannot be bound. */
export function listen(server: net.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}
