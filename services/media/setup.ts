import type { Client, ServiceImpl } from "@connectrpc/connect";
import type { DirectoryService } from "../../gen/switchboard/internal/v1/directory_pb.js";
import type { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import type { Tokens } from "../common/auth.js";
import { UnauthenticatedError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { type AvatarDirectory, AvatarRules, type ContactSource } from "./avatars.js";
import type { MediaConfig } from "./config.js";
import { type Authenticate, mediaService } from "./handler.js";
import { Media, type MediaQuotaOptions, type MembershipSource } from "./media.js";
import type { MediaEngine } from "./types.js";

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
  /** Limits and the sweep interval (the engine's own settings are openMedia's). */
  config: MediaConfig;
  /** The object store engine, opened by openMedia (services/server/engines.ts). */
  engine: MediaEngine;
  /** The sequencer (GetMembers). */
  members: MembershipSource;
  /** Authenticates device calls. */
  authenticate: Authenticate;
  log: Logger;
  /** The upload quota's limiter and the process's refusal counter. */
  quota?: MediaQuotaOptions;
  /**
   * For avatars: the accounts service's directory (avatar records, privacy settings) and the
   * sequencer's FindContacts. Without them the avatar RPCs answer UNIMPLEMENTED.
   */
  avatars?: { directory: AvatarDirectory; contacts: ContactSource };
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
      throw new UnauthenticatedError("device has been revoked");
    }
    return p;
  };
}

/** Starts the media service on an opened engine, with its sweep. */
export async function startMedia(deps: MediaDependencies): Promise<StartedMedia> {
  const { config, engine, log } = deps;
  const media = new Media(engine.store, deps.members, log, config.limits, undefined, deps.quota);
  media.startSweeper(config.sweepIntervalMs);
  log.info(
    { engine: engine.store.engine, objectsUrl: engine.objectsUrl, maxBytes: config.limits.maxBytes },
    "media service started",
  );
  return {
    media,
    service: mediaService(
      media,
      deps.authenticate,
      deps.avatars && new AvatarRules(media, deps.avatars.directory, deps.avatars.contacts, log),
    ),
    objectsUrl: engine.objectsUrl,
    async close() {
      // The engine's HTTP server first, so uploads in flight finish before the store closes.
      await engine.stop();
      await media.close();
    },
  };
}
