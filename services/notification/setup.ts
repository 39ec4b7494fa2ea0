import { readFile } from "node:fs/promises";
import type { PushConfig } from "../common/config.js";
import type { Logger } from "../common/log.js";
import { ApnsProvider } from "./providers/apns.js";
import { FcmProvider, fcmOptionsFromServiceAccount } from "./providers/fcm.js";
import { LogPushProvider } from "./providers/log.js";
import { WebPushProvider } from "./providers/webpush.js";
import type { PushProvider } from "./types.js";

/**
 * One provider per kind: the real one where credentials are configured, otherwise the log-only
 * embedded default. Credentials are read here, at start-up, so a bad file stops the process with
 * a message naming it.
 */
export async function buildPushProviders(config: PushConfig, log: Logger): Promise<PushProvider[]> {
  const read = async (what: string, path: string) => {
    try {
      return await readFile(path, "utf8");
    } catch (err) {
      throw new Error(`configuration: cannot read the ${what} at ${path}: ${(err as Error).message}`);
    }
  };
  const providers: PushProvider[] = [];
  providers.push(
    config.webPush
      ? new WebPushProvider({ ...config.webPush, allowPrivateEndpoints: config.allowPrivateEndpoints })
      : new LogPushProvider("webpush", log),
  );
  if (config.fcm) {
    const json = await read("FCM service account", config.fcm.serviceAccountFile);
    providers.push(
      new FcmProvider(
        fcmOptionsFromServiceAccount(json, {
          ...(config.fcm.endpoint !== undefined && { endpoint: config.fcm.endpoint }),
          ...(config.fcm.tokenUri !== undefined && { tokenUri: config.fcm.tokenUri }),
        }),
      ),
    );
  } else {
    providers.push(new LogPushProvider("fcm", log));
  }
  if (config.apns) {
    providers.push(
      new ApnsProvider({
        teamId: config.apns.teamId,
        keyId: config.apns.keyId,
        privateKey: await read("APNs key", config.apns.keyFile),
        ...(config.apns.productionEndpoint !== undefined && {
          productionEndpoint: config.apns.productionEndpoint,
        }),
        ...(config.apns.sandboxEndpoint !== undefined && { sandboxEndpoint: config.apns.sandboxEndpoint }),
      }),
    );
  } else {
    providers.push(new LogPushProvider("apns", log));
  }
  log.info(
    { webpush: !!config.webPush, fcm: !!config.fcm, apns: !!config.apns },
    "push providers (unconfigured kinds only log their pushes)",
  );
  return providers;
}
