import { hostname } from "node:os";
import { E2ee } from "../e2ee.js";
import { Profile } from "../profile.js";
import { FileStorage } from "../storage/file.js";
import type { ProfileStorage } from "../storage/port.js";
import { connectToServer, type ServerConnection } from "../transport.js";
import type { DeviceCredentials, OpenOptions, PayloadCodec } from "../types.js";
import { ClientContext, tuningWithDefaults, UNARY_TIMEOUT_MS } from "./context.js";
import { Emitter } from "./events.js";

/** Opens a profile, its connection and (when on) its encryption: everything a client shares. */
export async function openContext(options: OpenOptions, defaultCodec: PayloadCodec): Promise<ClientContext> {
  const profile = await Profile.open(storageOf(options));
  const serverUrl = options.serverUrl ?? profile.credentials.serverUrl;
  const conn = connectToServer({
    serverUrl,
    credential: { deviceId: profile.credentials.deviceId, deviceSecret: profile.credentials.deviceSecret },
    unaryTimeoutMs: UNARY_TIMEOUT_MS,
    ...(options.alternateUrls !== undefined && { alternateUrls: options.alternateUrls }),
    ...(options.streamUrl !== undefined && { streamUrl: options.streamUrl }),
    ...(options.streamFallback !== undefined && { streamFallback: options.streamFallback }),
    ...(options.learnStreamUrl !== undefined && { learnStreamUrl: options.learnStreamUrl }),
    ...(profile.streamUrl !== undefined && { learnedStreamUrl: profile.streamUrl }),
  });
  const events = new Emitter();
  // A profile made with encryption stays encrypted unless the app says otherwise: one that lost
  // its Signal state must not fall back to plaintext silently.
  const encryption = options.encryption ?? profile.credentials.encrypted === true;
  const e2ee = encryption
    ? await E2ee.open(
        profile.storage,
        { userId: profile.credentials.userId, deviceId: profile.credentials.deviceId },
        conn,
        (event) => events.emit("identityChanged", event),
        options.signedPrekeyMaxAgeMs,
      )
    : undefined;
  if (e2ee !== undefined) {
    e2ee.onDevicesChanged = (event) => events.emit("devicesChanged", event);
    // Plaintexts of messages that disappeared while the app was closed go before anything is shown.
    await e2ee.startExpirySweep((err) => events.reportError(err));
  }
  return new ClientContext(
    profile,
    conn,
    options.codec ?? defaultCodec,
    tuningWithDefaults(options),
    events,
    e2ee,
    options.acceptUnencrypted === true,
  );
}

/**
 * Writes a new profile for a device the server makes with `join` (registration or linking).
 * Refuses an existing profile before the server creates anything, so a typo does not leave an
 * orphan account.
 */
export async function createProfile(
  options: { serverUrl: string; profileDir?: string; storage?: ProfileStorage; encryption?: boolean },
  join: (conn: ServerConnection, defaultDeviceName: string) => Promise<DeviceCredentials>,
): Promise<void> {
  const storage = storageOf(options);
  if (await Profile.exists(storage)) {
    throw new Error(`a profile already exists in ${storage.location}; use another --profile directory`);
  }
  const conn = connectToServer({ serverUrl: options.serverUrl });
  let credentials: DeviceCredentials;
  try {
    credentials = await join(conn, hostname());
  } finally {
    conn.close();
  }
  // Encrypted unless the app asks for plaintext: the CLI and the SDK agree on the default.
  await Profile.create(storage, { ...credentials, encrypted: options.encryption !== false });
}

/** The storage an app named: its own engine, or the file engine over profileDir. */
export function storageOf(options: { profileDir?: string; storage?: ProfileStorage }): ProfileStorage {
  if (options.storage !== undefined && options.profileDir !== undefined) {
    throw new Error("give profileDir or storage, not both");
  }
  if (options.storage !== undefined) return options.storage;
  if (options.profileDir === undefined || options.profileDir === "") {
    throw new Error("give profileDir (a directory for the profile) or storage (a ProfileStorage engine)");
  }
  return new FileStorage(options.profileDir);
}
