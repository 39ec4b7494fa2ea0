import { type ProtocolAddress, SessionRecord, SessionStore } from "@signalapp/libsignal-client";
import type { RecordSet } from "../../storage/records.js";

/** Double Ratchet sessions, one per remote device. */
export class SessionFileStore extends SessionStore {
  constructor(private readonly records: RecordSet) {
    super();
  }

  override async saveSession(name: ProtocolAddress, record: SessionRecord): Promise<void> {
    await this.records.put([[name.toString(), record.serialize()]]);
  }

  override async getSession(name: ProtocolAddress): Promise<SessionRecord | null> {
    const raw = this.records.get(name.toString());
    return raw === undefined ? null : SessionRecord.deserialize(raw);
  }

  override async getExistingSessions(addresses: ProtocolAddress[]): Promise<SessionRecord[]> {
    const out: SessionRecord[] = [];
    for (const address of addresses) {
      const record = await this.getSession(address);
      if (record === null) throw new Error(`no session with ${address.name()}`);
      out.push(record);
    }
    return out;
  }

  /** Forgets the session with an address (a stale device); resolves once durable. */
  async deleteSession(name: ProtocolAddress): Promise<void> {
    await this.records.delete([name.toString()]);
  }
}
