import { createClient } from "@connectrpc/connect";
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from "@signalapp/libsignal-client";
import { KeyService } from "../../gen/switchboard/v1/keys_pb.js";
import type { TestDevice } from "./device.js";

/** A device with its registration id, as a sender's sessions know it. */
export interface Keyed {
  device: TestDevice;
  registrationId: number;
}

function signed(identity: IdentityKeyPair, keyId: number, key: Uint8Array) {
  const publicKey = new Uint8Array(key);
  return { keyId, publicKey, signature: identity.privateKey.sign(publicKey) };
}

/** Publishes a device's keys (as its first upload) so the directory knows its registration id. */
export async function publishKeys(device: TestDevice, registrationId: number): Promise<void> {
  const identity = IdentityKeyPair.generate();
  await createClient(KeyService, device.transport).uploadKeys({
    identityKey: identity.publicKey.serialize(),
    registrationId,
    signedPrekey: signed(identity, 1, PrivateKey.generate().getPublicKey().serialize()),
    kyberLastResortPrekey: signed(identity, 1_000_000, KEMKeyPair.generate().getPublicKey().serialize()),
    oneTimePrekeys: [],
    oneTimeKyberPrekeys: [],
  });
}
