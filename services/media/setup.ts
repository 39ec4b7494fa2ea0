import * as http from "node:http";
import type { AddressInfo } from "node:net";
import type { Client, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import type { Tokens } from "../common/auth.js";
import type { Logger } from "../common/log.js";
import { deriveMediaUrlKey, type MediaConfig } from "./config.js";
import { type Authenticate, localObjectsHttpHandler, mediaService } from "./handler.js";
import { LocalObjectStore } from "./local.js";
import { Media, type MediaQuotaOptions, type MembershipSource } from "./media.js";
import { MinioObjectStore } from "./minio.js";
import type { ObjectStore } from "./types.js";

/** A running media service. */
export interface StartedMedia {
  media: Media;
  /** The MediaService implementation, to register on the process's router. */
  service: ServiceImpl<typeof MediaService>;
  /** The local engine's HTTP server ("http://host:port"); undefined with MinIO. */
  objectsUrl: string | undefined;
  /** Stops the sweep and the HTTP server, closes the store. */
  close(): Promise<void>;
}

/** What startMedia needs from the process. */
export interface MediaDependencies {
  config: MediaConfig;
  /** Address the local engine's HTTP server listens on. */
  host: string;
  /** The access-token key; the local URL key is derived from it unless configured. */
  tokenKey: Uint8Array;
  /** The sequencer (GetMembers). */
  members: MembershipSource;
  /** Authenticates device calls. */
  authenticate: Authenticate;
  log: Logger;
  /** The upload quota's limiter and the process's refusal counter. */
  quota?: MediaQuotaOptions;
}

/**
 * Authentication for a process without a gateway: the token's signature and expiry, then the
 * device's status from accounts (no cache: media calls are rare next to sends).
 */
export function deviceAuthenticator(
  tokens: Tokens,
  directory: Client<typeof DirectoryService>,
): Authenticate {
  return async (header) => {
    const p = await tokens.verifyHeader(header);
    const { devices } = await directory.getDevices({ deviceIds: [p.deviceId] });
    const device = devices[0];
    if (device?.active !== true || device.userId !== p.userId) {
      throw new ConnectError("device has been revoked", Code.Unauthenticated);
    }
    return p;
  };
}

/** Opens the configured engine, starts the local engine's HTTP server and the sweep. */
export async function startMedia(deps: MediaDependencies): Promise<StartedMedia> {
  const { config, log } = deps;
  const engine = config.engine;
  let store: ObjectStore;
  let server: http.Server | undefined;
  let objectsUrl: string | undefined;
  if (engine.kind === "local") {
    let local: LocalObjectStore | undefined;
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (local === undefined) {
        res.writeHead(503, { "content-type": "text/plain", connection: "close" }).end("starting\n");
        return;
      }
      localObjectsHttpHandler(local, log)(req, res);
    };
    const s = http.createServer(handler);
    server = s;
    await new Promise<void>((resolve, reject) => {
      s.once("error", reject);
      s.listen(engine.port, deps.host, () => {
        s.off("error", reject);
        resolve();
      });
    });
    const port = (s.address() as AddressInfo).port;
    objectsUrl = `http://${deps.host.includes(":") ? `[${deps.host}]` : deps.host}:${port}`;
    try {
      local = await LocalObjectStore.open({
        dir: engine.dir,
        publicBaseUrl: engine.publicBaseUrl ?? objectsUrl,
        urlKey: engine.urlKey ?? deriveMediaUrlKey(deps.tokenKey),
      });
    } catch (err) {
      s.close();
      throw err;
    }
    store = local;
  } else {
    store = await MinioObjectStore.open(engine.options);
  }
  const media = new Media(store, deps.members, log, config.limits, undefined, deps.quota);
  media.startSweeper(config.sweepIntervalMs);
  log.info({ engine: store.engine, objectsUrl, maxBytes: config.limits.maxBytes }, "media service started");
  return {
    media,
    service: mediaService(media, deps.authenticate),
    objectsUrl,
    async close() {
      if (server) {
        const s = server;
        const closed = new Promise<void>((resolve) => s.close(() => resolve()));
        s.closeIdleConnections();
        // Uploads in flight get a moment to finish; then their connections go.
        const force = setTimeout(() => s.closeAllConnections(), 2000);
        await closed;
        clearTimeout(force);
      }
      await media.close();
    },
  };
}
