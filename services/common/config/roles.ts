// The roles alone, without the schemas (zod) of mesh.ts: `switchboard start --help` lists them, and
// the CLI defines its commands without loading the configuration module (services/cli/main.ts).

/** The services one process can run. */
export const ROLES = [
  "gateway",
  "accounts",
  "sequencer",
  "fanout",
  "presence",
  "notification",
  "media",
] as const;

/** One service. */
export type Role = (typeof ROLES)[number];
