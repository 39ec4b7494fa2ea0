/**
 * Every variable the configuration reads, by section: the schema docs/configuration.md is checked
 * against (config.test.ts), so a variable cannot be added without its row, nor a row outlive it.
 */
import type { z } from "zod";
import { accountVariables, privacyVariables } from "./accounts.js";
import { callVariables } from "./calls.js";
import { flagVariables } from "./flags.js";
import { edgeVariables, limitVariables } from "./limits.js";
import { serverVariables } from "./load.js";
import { localMediaVariables, mediaVariables, minioVariables } from "./media.js";
import { meshVariables } from "./mesh.js";
import { pushVariables } from "./push.js";
import { retentionVariables } from "./retention.js";
import { scyllaVariables } from "./scylla.js";
import { tracingVariables } from "./telemetry.js";
import { webVariables } from "./web.js";

/** Each section's variables: names to the zod schema of their text. */
export const VARIABLES: Readonly<Record<string, z.ZodObject>> = {
  server: serverVariables,
  limits: limitVariables,
  edge: edgeVariables,
  push: pushVariables,
  mesh: meshVariables,
  tracing: tracingVariables,
  media: mediaVariables,
  localMedia: localMediaVariables,
  minio: minioVariables,
  accounts: accountVariables,
  privacy: privacyVariables,
  scylla: scyllaVariables,
  web: webVariables,
  calls: callVariables,
  retention: retentionVariables,
  featureFlags: flagVariables,
};
