import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { CiphertextMessageType } from "@signalapp/libsignal-client";
import { DeviceCiphertextSchema, MessageBodySchema } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type DeviceCiphertext,
  type DeviceRef,
  GroupCipher,
  generateInitialKeys,
  PairwiseCipher,
  SignalStores,
} from "../../sdk/crypto/index.js";
import type { MemoryKeyDirectory } from "../../sdk/crypto/memory-directory.js";
import { newId } from "../../services/common/ids.js";

/** Devices: the SDK's ciphers on their own profile directory. */

export interface Device {
  ref: DeviceRef;
  stores: SignalStores;
  cipher: PairwiseCipher;
  groups: GroupCipher;
}

/** A device with its keys generated and uploaded to the directory; `prekeys` one-time keys of each kind. */
export async function newDevice(
  root: string,
  directory: MemoryKeyDirectory,
  prekeys: number,
  userId?: string,
) {
  const ref = { userId: userId ?? newId("u"), deviceId: newId("dv") };
  const stores = await SignalStores.open(join(root, ref.deviceId));
  directory.upload(ref, await generateInitialKeys(stores, { ec: prekeys, kyber: prekeys }));
  const cipher = new PairwiseCipher(stores, ref, directory.fetcherFor(ref));
  return { ref, stores, cipher, groups: await GroupCipher.open(stores, ref) } satisfies Device;
}

/** Creates devices 8 at a time (creating one mostly waits on fsync). */
export async function newDevices(count: number, make: () => Promise<Device>): Promise<Device[]> {
  const out: Device[] = [];
  while (out.length < count) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(8, count - out.length) }, make))));
  }
  return out;
}

/** The MessageBody a send carries: its size is what goes on the wire, besides the frame. */
export function bodyBytes(devices: DeviceCiphertext[], payload?: Uint8Array): number {
  const devicePayloads = devices.map((c) => create(DeviceCiphertextSchema, c));
  const body = create(MessageBodySchema, {
    devicePayloads,
    ...(payload === undefined ? {} : { payload, payloadType: CiphertextMessageType.SenderKey }),
  });
  return toBinary(MessageBodySchema, body).length;
}

export const byDevice = (out: DeviceCiphertext[]) => new Map(out.map((c) => [c.deviceId, c]));
