import { create, toBinary } from "@bufbuild/protobuf";
import { ContentKind, SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import { DeviceCiphertextSchema, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { PairwiseCipher } from "../../sdk/crypto/pairwise.js";
import { SignalStores } from "../../sdk/crypto/stores.js";
import { PAIRWISE_PAYLOAD_TYPE } from "../../sdk/e2ee.js";
import { connectToServer } from "../../sdk/transport.js";

interface DeviceRef {
  userId: string;
  deviceId: string;
}

/**
 * Sends a message in a device's name (with its own token) but encrypted under a new identity key,
 * as a server that controls the key directory could: the SDK must refuse it, never show it.
 */
export async function sendUnderNewIdentity(options: {
  serverUrl: string;
  /** Where the impostor keeps its Signal state (a fresh directory). */
  storeDir: string;
  sender: DeviceRef & { deviceSecret: string };
  conversationId: string;
  clientMsgId: string;
  text: string;
  to: DeviceRef[];
}): Promise<void> {
  const { sender, conversationId } = options;
  const impostor = await SignalStores.open(options.storeDir);
  const conn = connectToServer({
    serverUrl: options.serverUrl,
    credential: { deviceId: sender.deviceId, deviceSecret: sender.deviceSecret },
  });
  try {
    const cipher = new PairwiseCipher(
      impostor,
      { userId: sender.userId, deviceId: sender.deviceId },
      (userId, deviceIds) => conn.keys.getBundles({ userId, deviceIds }),
    );
    const content = toBinary(
      SealedContentSchema,
      create(SealedContentSchema, {
        payload: new TextEncoder().encode(options.text),
        conversationId,
        kind: ContentKind.MESSAGE,
      }),
    );
    const cts = await cipher.encrypt(content, options.to);
    await conn.gateway.send({
      entry: create(OutgoingEntrySchema, {
        clientMsgId: options.clientMsgId,
        conversationId,
        body: {
          case: "message",
          value: {
            payloadType: PAIRWISE_PAYLOAD_TYPE,
            devicePayloads: cts.map((c) => create(DeviceCiphertextSchema, c)),
          },
        },
      }),
    });
  } finally {
    conn.close();
  }
}
