import type { ConversationStore, DeviceFloor } from "../store/types.js";
import { ReplicaShards } from "./replica.js";

// Device floors (where a linked device starts reading) kept in memory, and how many
// conversations' last seqs are read at once while a device is linked.
const FLOOR_CACHE_MAX = 100_000;
const FLOOR_READS_AT_ONCE = 64;
// Floors written to the store per call while a device is linked.
const FLOOR_WRITE_SLICE = 1000;

/**
 * Where a linked device starts reading in each conversation: the last seq when it was linked.
 * A device is served nothing from before its floor, while the user's other devices keep the
 * whole history.
 */
export class DeviceFloors {
  /**
   * Linked devices' floors in this replica's conversations, "deviceId\nconversationId" -> the
   * floor, null when none was recorded. Never stale: a floor is written before its device
   * exists (RecordDeviceLink), by the replica that owns the conversation, which sets it here.
   */
  private readonly floors = new Map<string, number | null>();

  constructor(
    private readonly shards: ReplicaShards,
    private readonly store: ConversationStore,
  ) {}

  /** A device's floor in a conversation of this replica (0 when it has none). */
  async deviceFloor(deviceId: string, conversationId: string): Promise<number> {
    const key = `${deviceId}\n${conversationId}`;
    let floor = this.floors.get(key);
    if (floor === undefined) {
      floor = (await this.store.getDeviceFloor(deviceId, conversationId)) ?? null;
      this.rememberFloor(key, floor);
    }
    return floor ?? 0;
  }

  private rememberFloor(key: string, floor: number | null): void {
    this.floors.delete(key);
    this.floors.set(key, floor);
    for (const oldest of this.floors.keys()) {
      if (this.floors.size <= FLOOR_CACHE_MAX) break;
      this.floors.delete(oldest);
    }
  }

  /**
   * Records, for a device about to be linked to the user, where it starts in each of the
   * user's conversations in this replica's shards: their last committed seq now. The device
   * is then served nothing from before (history, sync pages, the backlog on connect), while
   * the user's other devices keep the whole history. Called before the device exists, so no
   * read of its floors can come first; a send still being committed as this runs may reach it.
   * Every conversation of the user, not only the first USER_CONVERSATIONS_MAX (views.ts) of a listing.
   */
  async recordDeviceLink(userId: string, deviceId: string, held = this.shards.held()): Promise<number> {
    const { shardCount } = this.shards;
    const rows = (await this.store.listUserConversations(userId)).filter((r) =>
      ReplicaShards.within(held, r.conversationId, shardCount),
    );
    const floors: DeviceFloor[] = [];
    for (let i = 0; i < rows.length; i += FLOOR_READS_AT_ONCE) {
      const slice = rows.slice(i, i + FLOOR_READS_AT_ONCE);
      const seqs = await Promise.all(slice.map((r) => this.store.getLastSeq(r.conversationId)));
      slice.forEach((r, j) => {
        floors.push({ deviceId, conversationId: r.conversationId, floorSeq: seqs[j] ?? 0 });
      });
    }
    for (let i = 0; i < floors.length; i += FLOOR_WRITE_SLICE)
      await this.store.putDeviceFloors(floors.slice(i, i + FLOOR_WRITE_SLICE));
    for (const f of floors) this.rememberFloor(`${deviceId}\n${f.conversationId}`, f.floorSeq);
    return floors.length;
  }
}
