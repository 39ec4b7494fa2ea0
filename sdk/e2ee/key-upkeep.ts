import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import {
  generateInitialKeys,
  type RemainingPrekeys,
  replenishPrekeys,
  rotateSignedPrekeys,
  SIGNED_PREKEY_MAX_AGE_MS,
  signedPrekeyNeedsRotation,
} from "../crypto/keys.js";
import type { SignalStores } from "../crypto/stores.js";

/** A stream-less call (sendUnary, getHistory) checks the device's prekeys at most this often. */
const KEYS_CHECK_INTERVAL_MS = 60_000;

/**
 * This device's keys in the server's key directory: the first upload, the weekly rotation of the
 * signed prekeys and the top-up of one-time prekeys; and the refusal to go on when the profile
 * lost the private half of the identity the directory keeps.
 */
export class KeyUpkeep {
  private keysChecked: Promise<void> | undefined;
  /** A new identity was made for this profile and is not in the key directory yet. */
  private identityUnpublished: boolean;
  /** See OpenOptions.signedPrekeyMaxAgeMs (milliseconds). */
  signedPrekeyMaxAgeMs = SIGNED_PREKEY_MAX_AGE_MS;
  private replenishing: Promise<void> | undefined;
  /** When ensureKeysSoon last ran to its end (epoch milliseconds; 0 for never). */
  private keysCheckedAtMs = 0;

  constructor(
    private readonly stores: SignalStores,
    private readonly keys: Client<typeof KeyService>,
  ) {
    this.identityUnpublished = stores.identityCreated;
  }

  /**
   * Uploads the device's first keys if it has none on the server, or tops up one-time prekeys
   * when they run low. Called when a stream opens; concurrent calls share one run.
   */
  ensureKeys(): Promise<void> {
    this.keysChecked ??= this.checkKeys().finally(() => {
      this.keysChecked = undefined;
    });
    return this.keysChecked;
  }

  /**
   * ensureKeys for calls without a stream (sendUnary, getHistory): a device that never streams
   * must top up its one-time prekeys too. At most once a minute per process.
   */
  async ensureKeysSoon(): Promise<void> {
    if (Date.now() - this.keysCheckedAtMs < KEYS_CHECK_INTERVAL_MS) return;
    await this.ensureKeys();
    this.keysCheckedAtMs = Date.now();
  }

  /**
   * Before anything is encrypted: a profile whose Signal keys were lost must not encrypt under a
   * new identity nobody knows (ensureKeys publishes it, or says why it cannot).
   */
  async ensurePublished(): Promise<void> {
    if (this.identityUnpublished) await this.ensureKeys();
  }

  private async checkKeys(): Promise<void> {
    const counts = await this.keys.getPrekeyCounts({});
    if (!counts.keysUploaded) {
      await this.keys.uploadKeys(await generateInitialKeys(this.stores));
      this.identityUnpublished = false;
      return;
    }
    if (this.identityUnpublished) {
      // The directory's identity for this device never changes, and its private key is gone.
      throw new ConnectError(
        `this device's Signal keys are missing from its profile (${this.stores.location} was lost or ` +
          "replaced) while the key directory keeps the identity they belonged to, which never " +
          "changes: nobody can encrypt to this device any more. Link a new device for this user " +
          "and revoke this one.",
        Code.FailedPrecondition,
      );
    }
    // Weekly, as Signal does: a signed prekey's private half leaking opens only the sessions
    // started against it while it was current.
    const oldest = Math.min(
      Number(counts.signedPrekeyUploadedAtMs),
      Number(counts.kyberLastResortPrekeyUploadedAtMs),
    );
    if (signedPrekeyNeedsRotation(oldest, Date.now(), this.signedPrekeyMaxAgeMs))
      await this.keys.uploadKeys(await rotateSignedPrekeys(this.stores));
    await this.replenish({
      oneTimeEcPrekeys: counts.counts?.oneTimeEcPrekeys ?? 0,
      oneTimeKyberPrekeys: counts.counts?.oneTimeKyberPrekeys ?? 0,
    });
  }

  /** Uploads one-time prekeys up to the targets (on a prekeys_low frame or low counts). */
  replenish(remaining: RemainingPrekeys): Promise<void> {
    const run = async () => {
      for (const request of await replenishPrekeys(this.stores, remaining))
        await this.keys.uploadKeys(request);
    };
    const next = (this.replenishing ?? Promise.resolve()).catch(() => {}).then(run);
    this.replenishing = next;
    return next;
  }
}
