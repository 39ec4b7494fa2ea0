/**
 * The configuration module's public face: the one place services/ reads the environment and the
 * settings file. The sections live in config/ (one file each: server in load.ts, limits, push,
 * mesh, telemetry, media, accounts, scylla), each a zod schema of its variables; schema.ts holds
 * the building blocks and error.ts the ConfigurationError every bad setting throws.
 */
export {
  type AccountLimits,
  defaultPrivacy,
  PRIVACY_AUDIENCES,
  type PrivacyAudience,
  type PrivacyDefaults,
  REGISTRATION_MODES,
  type RegistrationMode,
} from "./config/accounts.js";
export { type CallsConfig, TURN_TTL_BOUNDS, type TurnConfig } from "./config/calls.js";
export { environment, settingsEnvironment, settingVariables } from "./config/environment.js";
export { ConfigurationError } from "./config/error.js";
export type { FeatureFlag, FeatureFlagsConfig } from "./config/flags.js";
export {
  CLIENT_RECEIVE_LIMIT_BYTES,
  DEVICE_ENTRY_WIRE_BYTES,
  defaultEdgeLimits,
  defaultLimits,
  type EdgeLimits,
  gatewayReadMaxBytes,
  type Limits,
} from "./config/limits.js";
export { type Config, type ConfigInput, loadConfig } from "./config/load.js";
export {
  defaultMediaLimits,
  loadMediaConfig,
  type MediaConfig,
  type MediaLimits,
  type MinioSettings,
  type ObjectStoreEndpoint,
  parseEndpoint,
} from "./config/media.js";
export { type MeshConfig, type NatsConfig, ROLES, type Role, type ServiceUrls } from "./config/mesh.js";
export type { PushConfig } from "./config/push.js";
export type { Env } from "./config/schema.js";
export {
  loadMigrateSettings,
  loadScyllaConfig,
  MAX_TTL_SECONDS,
  type ScyllaSettings,
} from "./config/scylla.js";
export { readSettingsFile, SETTING_NAME } from "./config/settings-file.js";
export type { TracingConfig } from "./config/telemetry.js";
export { VARIABLES } from "./config/variables.js";
export type { WebConfig } from "./config/web.js";
