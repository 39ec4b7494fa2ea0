/** Push providers and the per-device push budget. */
import { z } from "zod";
import { ConfigurationError, fail } from "./error.js";
import { check, type Env, flag, int, intVariable, nonEmptyText, without } from "./schema.js";

/** Push providers; a kind without credentials falls back to logging its pushes. */
export interface PushConfig {
  /** Accept http:// Web Push endpoints (tests, a private push service on a trusted network). */
  allowHttpEndpoints: boolean;
  /**
   * Send Web Push to endpoints that are or resolve to loopback, private or link-local addresses
   * (checked at send time, on the address connected to). Defaults to allowHttpEndpoints.
   */
  allowPrivateEndpoints: boolean;
  /** Web Push (VAPID) credentials. */
  webPush?: { vapidPublicKey: string; vapidPrivateKey: string; subject: string };
  /** FCM HTTP v1: a service-account JSON file, and endpoints for private deployments or tests. */
  fcm?: { serviceAccountFile: string; endpoint?: string; tokenUri?: string };
  /** APNs token authentication: the team, the key id and the .p8 key file. */
  apns?: {
    teamId: string;
    keyId: string;
    keyFile: string;
    productionEndpoint?: string;
    sandboxEndpoint?: string;
  };
  /** Pushes per device per minute. */
  perDevicePerMinute: number;
  /** Pushes per device in a burst. */
  perDeviceBurst: number;
}

const WEB_PUSH = {
  vapidPublicKey: "SWITCHBOARD_WEBPUSH_VAPID_PUBLIC_KEY",
  vapidPrivateKey: "SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY",
  subject: "SWITCHBOARD_WEBPUSH_SUBJECT",
} as const;

const APNS = {
  teamId: "SWITCHBOARD_APNS_TEAM_ID",
  keyId: "SWITCHBOARD_APNS_KEY_ID",
  keyFile: "SWITCHBOARD_APNS_KEY_FILE",
} as const;

/** The push variables, in the order they are checked. */
export const pushVariables = z.object({
  SWITCHBOARD_WEBPUSH_VAPID_PUBLIC_KEY: nonEmptyText(),
  SWITCHBOARD_WEBPUSH_VAPID_PRIVATE_KEY: nonEmptyText(),
  SWITCHBOARD_WEBPUSH_SUBJECT: nonEmptyText(),
  SWITCHBOARD_FCM_SERVICE_ACCOUNT_FILE: nonEmptyText(),
  SWITCHBOARD_FCM_ENDPOINT: nonEmptyText(),
  SWITCHBOARD_FCM_TOKEN_URI: nonEmptyText(),
  SWITCHBOARD_APNS_TEAM_ID: nonEmptyText(),
  SWITCHBOARD_APNS_KEY_ID: nonEmptyText(),
  SWITCHBOARD_APNS_KEY_FILE: nonEmptyText(),
  SWITCHBOARD_APNS_PRODUCTION_ENDPOINT: nonEmptyText(),
  SWITCHBOARD_APNS_SANDBOX_ENDPOINT: nonEmptyText(),
  SWITCHBOARD_PUSH_ALLOW_HTTP: flag(),
  /** Unset: the value of SWITCHBOARD_PUSH_ALLOW_HTTP. */
  SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS: nonEmptyText().transform((v) =>
    v === undefined ? undefined : v === "true",
  ),
  SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE: intVariable("SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE", 12, false),
  SWITCHBOARD_PUSH_PER_DEVICE_BURST: intVariable("SWITCHBOARD_PUSH_PER_DEVICE_BURST", 4, false),
});

type PushVariables = z.output<typeof pushVariables>;

/** Variables that must be set together (or not at all). */
function group<K extends string>(
  vars: PushVariables,
  names: Record<K, keyof PushVariables>,
): Record<K, string> | undefined {
  const values = Object.entries(names).map(
    ([key, variable]) => [key, (vars[variable as keyof PushVariables] as string | undefined) ?? ""] as const,
  );
  const set = values.filter(([, v]) => v !== "");
  if (set.length === 0) return undefined;
  if (set.length < values.length) {
    const missing = Object.entries(names)
      .filter(([key]) => !set.some(([k]) => k === key))
      .map(([, variable]) => variable);
    throw new ConfigurationError(`configuration: also set ${missing.join(", ")}`);
  }
  return Object.fromEntries(values) as Record<K, string>;
}

export function loadPush(input: Partial<PushConfig> | undefined, env: Env): PushConfig {
  const vars = check(
    pushVariables,
    without(env, {
      SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE: input?.perDevicePerMinute,
      SWITCHBOARD_PUSH_PER_DEVICE_BURST: input?.perDeviceBurst,
    }),
  );
  const webPush = group(vars, WEB_PUSH);
  const apns = group(vars, APNS);
  const allowHttpEndpoints = input?.allowHttpEndpoints ?? vars.SWITCHBOARD_PUSH_ALLOW_HTTP;
  const push: PushConfig = {
    allowHttpEndpoints,
    allowPrivateEndpoints:
      input?.allowPrivateEndpoints ?? vars.SWITCHBOARD_PUSH_ALLOW_PRIVATE_ENDPOINTS ?? allowHttpEndpoints,
    perDevicePerMinute:
      input?.perDevicePerMinute === undefined
        ? vars.SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE
        : int("SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE", input.perDevicePerMinute),
    perDeviceBurst:
      input?.perDeviceBurst === undefined
        ? vars.SWITCHBOARD_PUSH_PER_DEVICE_BURST
        : int("SWITCHBOARD_PUSH_PER_DEVICE_BURST", input.perDeviceBurst),
  };
  // A zero rate would never refill a device's bucket: its pushes would wait for ever (the queue
  // used to spin on it). Turning pushes off is leaving the providers unconfigured.
  if (push.perDevicePerMinute < 1) fail("SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE must be at least 1");
  if (push.perDeviceBurst < 1) fail("SWITCHBOARD_PUSH_PER_DEVICE_BURST must be at least 1");
  const web = input?.webPush ?? webPush;
  if (web !== undefined) push.webPush = web;
  const fcmFile = vars.SWITCHBOARD_FCM_SERVICE_ACCOUNT_FILE;
  const fcm =
    input?.fcm ??
    (fcmFile
      ? {
          serviceAccountFile: fcmFile,
          ...(vars.SWITCHBOARD_FCM_ENDPOINT && { endpoint: vars.SWITCHBOARD_FCM_ENDPOINT }),
          ...(vars.SWITCHBOARD_FCM_TOKEN_URI && { tokenUri: vars.SWITCHBOARD_FCM_TOKEN_URI }),
        }
      : undefined);
  if (fcm !== undefined) push.fcm = fcm;
  const apple =
    input?.apns ??
    (apns && {
      ...apns,
      ...(vars.SWITCHBOARD_APNS_PRODUCTION_ENDPOINT && {
        productionEndpoint: vars.SWITCHBOARD_APNS_PRODUCTION_ENDPOINT,
      }),
      ...(vars.SWITCHBOARD_APNS_SANDBOX_ENDPOINT && {
        sandboxEndpoint: vars.SWITCHBOARD_APNS_SANDBOX_ENDPOINT,
      }),
    });
  if (apple) push.apns = apple;
  return push;
}
