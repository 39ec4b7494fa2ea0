/**
 * The media service's public face. The engines are chosen in services/server/engines.ts (the
 * MinIO engine, and its driver, loaded only when configured), so they are imported from their own
 * modules there rather than re-exported here.
 */

export { deriveMediaUrlKey } from "./config.js";
export { type LocalMediaOptions, openLocalMedia } from "./local-server.js";
export { AttachmentRetention, type RetentionHorizon } from "./retention.js";
export { deviceAuthenticator, type MediaDependencies, type StartedMedia, startMedia } from "./setup.js";
export type { MediaEngine, ObjectStore } from "./types.js";
