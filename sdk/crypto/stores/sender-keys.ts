import {
  type ProtocolAddress,
  SenderKeyRecord,
  SenderKeyStore,
  type Uuid,
} from "@signalapp/libsignal-client";
import type { RecordSet } from "../../storage/records.js";

/** Sender keys: ours and other members', per (sender device, distribution id). */
export class SenderKeyFileStore extends SenderKeyStore {
  constructor(private readonly records: RecordSet) {
    super();
  }

  override async saveSenderKey(
    sender: ProtocolAddress,
    distributionId: Uuid,
    record: SenderKeyRecord,
  ): Promise<void> {
    await this.records.put([[senderKeyName(sender, distributionId), record.serialize()]]);
  }

  override async getSenderKey(
    sender: ProtocolAddress,
    distributionId: Uuid,
  ): Promise<SenderKeyRecord | null> {
    const raw = this.records.get(senderKeyName(sender, distributionId));
    return raw === undefined ? null : SenderKeyRecord.deserialize(raw);
  }

  /** Forgets sender keys; resolves once durable. */
  async deleteSenderKeys(keys: Array<{ sender: ProtocolAddress; distributionId: Uuid }>): Promise<void> {
    await this.records.delete(keys.map((k) => senderKeyName(k.sender, k.distributionId)));
  }
}

function senderKeyName(sender: ProtocolAddress, distributionId: Uuid): string {
  return `${sender.toString()}/${distributionId.toLowerCase()}`;
}
