/**
 * Cursors and floors: where each device and member has received and read up to, and where a
 * linked device starts reading. Written apart from commits, in unlogged batches per partition.
 */
import type { DeviceCursor, DeviceFloor, MemberCursor } from "../../types.js";
import { type Cql, num } from "../schema.js";
import { nextWriteTs } from "./clock.js";

/** The conversation port's cursors and device floors. */
export class ConversationCursors {
  constructor(private readonly cql: Cql) {}

  async getDeviceCursors(conversationId: string, deviceIds: readonly string[]): Promise<DeviceCursor[]> {
    const ids = [...new Set(deviceIds)];
    const out: DeviceCursor[] = [];
    for (let i = 0; i < ids.length; i += 100) {
      const result = await this.cql.run(
        `SELECT device_id, delivered_up_to, read_up_to FROM device_cursors
          WHERE conversation_id = ? AND device_id IN ?`,
        [conversationId, ids.slice(i, i + 100)],
      );
      for (const row of result.rows ?? []) {
        out.push({
          conversationId,
          deviceId: row.get("device_id") as string,
          deliveredUpTo: num(row.get("delivered_up_to")),
          readUpTo: num(row.get("read_up_to")),
        });
      }
    }
    return out;
  }

  async saveCursors(devices: readonly DeviceCursor[], members: readonly MemberCursor[]): Promise<void> {
    // One unlogged batch per partition: atomic, and one round trip for a conversation's cursors.
    const byPartition = new Map<string, { query: string; params: unknown[] }[]>();
    const add = (key: string, query: string, params: unknown[]) => {
      const list = byPartition.get(key) ?? [];
      list.push({ query, params });
      byPartition.set(key, list);
    };
    for (const d of devices) {
      add(
        `d\n${d.conversationId}`,
        "UPDATE device_cursors SET delivered_up_to = ?, read_up_to = ? WHERE conversation_id = ? AND device_id = ?",
        [d.deliveredUpTo, d.readUpTo, d.conversationId, d.deviceId],
      );
    }
    for (const m of members) {
      // Only the cursor columns: a removed member's row gets no role back, so it stays removed
      // (getMembers skips rows without one).
      add(
        `m\n${m.conversationId}`,
        "UPDATE members SET delivered_up_to = ?, read_up_to = ? WHERE conversation_id = ? AND user_id = ?",
        [m.deliveredUpTo, m.readUpTo, m.conversationId, m.userId],
      );
    }
    await Promise.all(
      [...byPartition].map(async ([key, statements]) => {
        // Member rows are also written by fenced commits: their cursor cells take the
        // conversation's write clock (clock.ts), so a cursor move is never lost to a commit
        // stamped ahead of the driver's clock. device_cursors has no other writer.
        const ts = key.startsWith("m\n")
          ? { timestampMicros: await nextWriteTs(this.cql, key.slice(2)) }
          : {};
        const slices: Promise<unknown>[] = [];
        for (let i = 0; i < statements.length; i += 100)
          slices.push(this.cql.batch(statements.slice(i, i + 100), ts));
        await Promise.all(slices);
      }),
    );
  }

  async putDeviceFloors(floors: readonly DeviceFloor[]): Promise<void> {
    // One unlogged batch per device (its partition) and slice: atomic per slice, one round trip.
    const byDevice = new Map<string, { query: string; params: unknown[] }[]>();
    for (const f of floors) {
      const list = byDevice.get(f.deviceId) ?? [];
      list.push({
        query: "INSERT INTO device_floors (device_id, conversation_id, floor_seq) VALUES (?, ?, ?)",
        params: [f.deviceId, f.conversationId, f.floorSeq],
      });
      byDevice.set(f.deviceId, list);
    }
    await Promise.all(
      [...byDevice.values()].flatMap((statements) => {
        const slices: Promise<unknown>[] = [];
        for (let i = 0; i < statements.length; i += 100)
          slices.push(this.cql.batch(statements.slice(i, i + 100)));
        return slices;
      }),
    );
  }

  async getDeviceFloor(deviceId: string, conversationId: string): Promise<number | undefined> {
    const row = await this.cql.one(
      "SELECT floor_seq FROM device_floors WHERE device_id = ? AND conversation_id = ?",
      [deviceId, conversationId],
    );
    return row === undefined ? undefined : num(row.get("floor_seq"));
  }

  async listDeviceFloors(deviceId: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for await (const row of this.cql.pages(
      "SELECT conversation_id, floor_seq FROM device_floors WHERE device_id = ?",
      [deviceId],
    )) {
      out.set(row.get("conversation_id") as string, num(row.get("floor_seq")));
    }
    return out;
  }
}
