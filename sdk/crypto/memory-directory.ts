import { create } from "@bufbuild/protobuf";
import {
  type EcPrekey,
  type KyberPrekey,
  type PrekeyBundle,
  PrekeyBundleSchema,
  type SignedEcPrekey,
  type UploadKeysRequest,
} from "../../gen/switchboard/v1/keys_pb.js";
import type { BundleFetcher } from "./pairwise.js";
import type { DeviceRef } from "./stores.js";

interface DeviceKeys {
  userId: string;
  identityKey: Uint8Array;
  registrationId: number;
  signed: SignedEcPrekey;
  lastResort: KyberPrekey;
  ec: EcPrekey[];
  kyber: KyberPrekey[];
}

/**
 * An in-memory key directory with the server's hand-out rules (one bundle per device, each
 * one-time prekey handed out once, the caller's own device left out), for tests and demos without
 * a server. It does not verify signatures: libsignal does when a bundle is processed.
 */
export class MemoryKeyDirectory {
  private readonly devices = new Map<string, DeviceKeys>();

  /** Applies an UploadKeysRequest of a device, as KeyService.UploadKeys would. */
  upload(device: DeviceRef, request: UploadKeysRequest): void {
    let keys = this.devices.get(device.deviceId);
    if (keys === undefined) {
      if (request.signedPrekey === undefined || request.kyberLastResortPrekey === undefined) {
        throw new Error("the first upload must carry the signed and last-resort prekeys");
      }
      keys = {
        userId: device.userId,
        identityKey: request.identityKey,
        registrationId: request.registrationId,
        signed: request.signedPrekey,
        lastResort: request.kyberLastResortPrekey,
        ec: [],
        kyber: [],
      };
      this.devices.set(device.deviceId, keys);
    }
    if (request.signedPrekey) keys.signed = request.signedPrekey;
    if (request.kyberLastResortPrekey) keys.lastResort = request.kyberLastResortPrekey;
    const ecIds = new Set(keys.ec.map((k) => k.keyId));
    keys.ec.push(...request.oneTimePrekeys.filter((k) => !ecIds.has(k.keyId)));
    const kyberIds = new Set(keys.kyber.map((k) => k.keyId));
    keys.kyber.push(...request.oneTimeKyberPrekeys.filter((k) => !kyberIds.has(k.keyId)));
  }

  /** Replaces a device's keys entirely (a server substituting an identity, in tests). */
  replace(device: DeviceRef, request: UploadKeysRequest): void {
    this.devices.delete(device.deviceId);
    this.upload(device, request);
  }

  /** Remaining one-time prekeys of a device. */
  counts(deviceId: string): { oneTimeEcPrekeys: number; oneTimeKyberPrekeys: number } {
    const keys = this.devices.get(deviceId);
    return { oneTimeEcPrekeys: keys?.ec.length ?? 0, oneTimeKyberPrekeys: keys?.kyber.length ?? 0 };
  }

  /** A BundleFetcher acting for one requesting device. */
  fetcherFor(requester: DeviceRef): BundleFetcher {
    return async (userId, deviceIds) => {
      const bundles: PrekeyBundle[] = [];
      for (const [deviceId, keys] of this.devices) {
        if (keys.userId !== userId || deviceId === requester.deviceId) continue;
        if (deviceIds.length > 0 && !deviceIds.includes(deviceId)) continue;
        const ec = keys.ec.shift();
        const kyber = keys.kyber.shift();
        bundles.push(
          create(PrekeyBundleSchema, {
            deviceId,
            registrationId: keys.registrationId,
            identityKey: keys.identityKey,
            signedPrekey: keys.signed,
            kyberPrekey: kyber ?? keys.lastResort,
            kyberPrekeyIsLastResort: kyber === undefined,
            ...(ec === undefined ? {} : { oneTimePrekey: ec }),
          }),
        );
      }
      return { bundles, devicesWithoutKeys: [] };
    };
  }
}
