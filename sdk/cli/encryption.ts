import { stat } from "node:fs/promises";
import { join } from "node:path";
import { E2ee } from "../e2ee.js";
import { Profile } from "../profile.js";
import { connectToServer } from "../transport.js";

/**
 * Whether a profile was opened with end-to-end encryption before: it holds Signal keys
 * (`<profile>/signal`) or decrypted messages (`<profile>/e2ee`). Such a profile is encrypted for
 * good: peers encrypt to its keys, so opening it without encryption could read nothing they send
 * and would send them plaintext. A profile that lost its keys but kept the rest still counts, so
 * that its failures to decrypt show instead of a silent fall back to plaintext.
 */
export async function hasEncryptionKeys(profileDir: string): Promise<boolean> {
  for (const dir of ["signal", "e2ee"]) {
    try {
      if ((await stat(join(profileDir, dir))).isDirectory()) return true;
    } catch {
      // Not there: look at the next.
    }
  }
  return false;
}

/** True when the profile's credentials say it was made with end-to-end encryption. */
export async function markedEncrypted(profileDir: string): Promise<boolean> {
  try {
    return (await Profile.open(profileDir)).credentials.encrypted === true;
  } catch {
    return false;
  }
}

/**
 * Decides whether a command opens an existing profile with end-to-end encryption. `requested` is
 * --encryption (true), --no-encryption (false) or neither (undefined). A profile keeps the mode it
 * was made with, so a command run without either flag never changes it: an encrypted profile
 * stays encrypted, and one registered with --no-encryption stays plaintext until --encryption
 * turns it on. A profile counts as encrypted when it holds Signal state, when its credentials say
 * it was made encrypted, or (a profile from before that mark, asked only when `serverUrl` is
 * given; "" for the profile's own server) when the key directory holds keys of its device: one that lost its Signal state never
 * falls back to plaintext by itself. Only an explicit --no-encryption does that, and only once
 * the keys are gone (nothing could decrypt any more).
 */
export async function chooseEncryption(
  profileDir: string,
  requested: boolean | undefined,
  serverUrl?: string,
): Promise<boolean> {
  const keys = await hasEncryptionKeys(profileDir);
  if (requested === false && keys) {
    throw new Error(
      `the profile in ${profileDir} is end-to-end encrypted and cannot be used without encryption ` +
        "(its contacts encrypt to its keys); to talk to clients without encryption, register " +
        "another profile with --no-encryption",
    );
  }
  if (requested !== undefined) return requested;
  if (keys) return true;
  const marked = (await Profile.open(profileDir)).credentials.encrypted;
  if (marked !== undefined) return marked;
  return serverUrl !== undefined && (await keysInDirectory(profileDir, serverUrl));
}

/** True when the key directory holds keys of the profile's device. */
async function keysInDirectory(profileDir: string, serverUrl: string): Promise<boolean> {
  const profile = await Profile.open(profileDir);
  const { deviceId, deviceSecret } = profile.credentials;
  const conn = connectToServer({
    serverUrl: serverUrl || profile.credentials.serverUrl,
    credential: { deviceId, deviceSecret },
  });
  try {
    return (await conn.keys.getPrekeyCounts({})).keysUploaded;
  } finally {
    conn.close();
  }
}

/**
 * Makes sure the device's keys are in the server's key directory, uploading them if not. The
 * streaming client does this on connect; a command that never opens the stream (register, link,
 * send, history) would otherwise leave the device unreachable: nobody can encrypt to a device
 * without keys. Runs before the command opens its client, so the two never hold the Signal
 * stores at the same time.
 */
export async function publishKeys(profileDir: string, serverUrl: string | undefined): Promise<void> {
  const profile = await Profile.open(profileDir);
  const { userId, deviceId, deviceSecret } = profile.credentials;
  const conn = connectToServer({
    serverUrl: serverUrl ?? profile.credentials.serverUrl,
    credential: { deviceId, deviceSecret },
  });
  try {
    const counts = await conn.keys.getPrekeyCounts({});
    if (counts.keysUploaded) return;
    const e2ee = await E2ee.open(profileDir, { userId, deviceId }, conn, () => {});
    await e2ee.ensureKeys();
  } finally {
    conn.close();
  }
}

/**
 * Holds a profile's lock while a command uses its Signal state without a stream. The Signal
 * stores live in memory in each process and are written back whole; two processes on one
 * profile (a `listen` and a `send`) would each advance a session from the same state and
 * overwrite each other's records, breaking decryption for good. The SDK takes the same lock when
 * a stream opens.
 */
export async function lockProfile(profileDir: string): Promise<() => Promise<void>> {
  const profile = await Profile.open(profileDir);
  try {
    await profile.lock();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(
      `${message}; with end-to-end encryption one process at a time uses a profile: stop the ` +
        "other command (a listen or chat) first",
    );
  }
  return () => profile.unlock();
}
