import type { DescService } from "@bufbuild/protobuf";
import {
  type Client,
  type ConnectRouter,
  createClient,
  type Interceptor,
  type ServiceImpl,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { errorBoundary } from "../common/boundary.js";
import { sendInternalCredential } from "../common/internal-auth.js";
import type { Logger } from "../common/log.js";
import { clientTelemetry, serverTelemetry } from "../common/rpc-telemetry.js";
import { createDirectTransport } from "./direct-transport.js";
import { INTERNAL_READ_MAX_BYTES } from "./grpc-wire.js";
import { createInternalTransport } from "./internal-client.js";
import type { Closers } from "./lifecycle.js";

/** A service of this process: served on the internal router and, for other processes, on the network. */
export interface LocalService {
  /** The service's descriptor. */
  service: DescService;
  /** The implementation, which in-process clients call directly. */
  impl: object;
  /** Registers the service's implementation on a router. */
  register: (router: ConnectRouter) => void;
}

/**
 * How the services of a process reach each other. Services always talk through their typed RPC
 * clients: one in this process through a transport that calls its implementation directly
 * (direct-transport.ts: the same interceptors, no serialisation), one in another process over
 * gRPC, so the calling code is the same either way.
 */
export class ServiceClients {
  /** This process's services, in registration order. */
  readonly local: LocalService[] = [];
  /** One HTTP/2 connection per address, shared by every client of this process. */
  private readonly remotes = new Map<string, Transport>();
  private localTransport: Transport | undefined;

  constructor(
    private readonly closers: Closers,
    /** The internal credential sent on calls to other processes (multi-process only). */
    private readonly credential: string | undefined,
    private readonly log: Logger,
  ) {}

  /** Adds a service of this process. */
  register<S extends DescService>(service: S, impl: ServiceImpl<S>): void {
    this.local.push({ service, impl, register: (router) => router.service(service, impl) });
  }

  /** The transport to a service in another process; its connection is closed at shutdown. */
  remote(baseUrl: string): Transport {
    const known = this.remotes.get(baseUrl);
    if (known) return known;
    const sessionManager = new Http2SessionManager(baseUrl, {
      pingIntervalMs: 10_000,
      pingTimeoutMs: 5_000,
    });
    this.closers.add(`connection to ${baseUrl}`, () => sessionManager.abort());
    const interceptors: Interceptor[] = [
      clientTelemetry(),
      ...(this.credential ? [sendInternalCredential(this.credential)] : []),
    ];
    // Unary calls are written on the session directly (internal-client.ts); connect-node's
    // transport stays for streams. Nothing is compressed between our own processes: what they
    // exchange is mostly ciphertext, and gzip of every larger answer (route lookups, history
    // pages) was 6 % of the presence role's main thread in the mesh's profile (benchmarks.md).
    const transport = createInternalTransport({
      baseUrl,
      sessionManager,
      interceptors,
      defaultTimeoutMs: 15_000,
      readMaxBytes: INTERNAL_READ_MAX_BYTES,
      streams: createGrpcTransport({
        baseUrl,
        sessionManager,
        interceptors,
        defaultTimeoutMs: 15_000,
        acceptCompression: [],
        readMaxBytes: INTERNAL_READ_MAX_BYTES,
      }),
    });
    this.remotes.set(baseUrl, transport);
    return transport;
  }

  /** The direct transport to every local service, behind the same boundary as the network face. */
  private inProcess(): Transport {
    this.localTransport ??= createDirectTransport(
      () => this.local,
      [serverTelemetry(), errorBoundary(this.log)],
    );
    return this.localTransport;
  }

  /** A client of a service: in this process when isLocal, else at url. */
  clientOf<S extends DescService>(service: S, isLocal: boolean, url: string | undefined): Client<S> {
    if (isLocal) return createClient(service, { ...lazy(() => this.inProcess()) });
    if (url === undefined) throw new Error(`no address for ${service.typeName}`);
    return createClient(service, this.remote(url));
  }
}

/** A transport created on first use: local services register before anyone calls them. */
function lazy(make: () => Transport): Transport {
  return {
    unary: (...args) => make().unary(...args),
    stream: (...args) => make().stream(...args),
  };
}
