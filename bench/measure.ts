import { clock } from "./load.js";
import type { BenchMesh, BenchMeshProcess } from "./mesh.js";
import { type BenchServer, type ProbeSample, readCpuSeconds, readMachineCpu, readMemory } from "./server.js";

/** What the bench reads of the server's processes and its own: CPU marks and memory snapshots. */

/** CPU seconds used so far, by the server (or each mesh process), the bench and the machine. */
export interface CpuMark {
  at: number;
  server: ReturnType<typeof readCpuSeconds>;
  /** Each mesh process by name. */
  mesh: Map<string, ReturnType<typeof readCpuSeconds>>;
  client: number;
  machine: ReturnType<typeof readMachineCpu>;
}

export function cpuMark(
  pid: number | undefined,
  mesh: BenchMeshProcess[],
  /** Load generators in processes of their own (--worker-processes): the bench client's CPU too. */
  generatorPids: readonly number[] = [],
): CpuMark {
  const u = process.cpuUsage();
  return {
    at: clock(),
    server: pid === undefined ? undefined : readCpuSeconds(pid),
    mesh: new Map(mesh.map((p) => [p.name, readCpuSeconds(p.pid)])),
    client:
      (u.user + u.system) / 1e6 + generatorPids.reduce((sum, p) => sum + (readCpuSeconds(p)?.all ?? 0), 0),
    machine: readMachineCpu(),
  };
}

/**
 * Memory of every mesh process at one moment: after a full GC and a compaction where the probe
 * answers (server.ts, SETTLE_MS).
 */
export async function meshMemory(mesh: BenchMesh | undefined): Promise<Map<string, MemorySnapshot>> {
  const out = new Map<string, MemorySnapshot>();
  if (mesh === undefined) return out;
  const probed = await mesh.memoryAfterGc();
  for (const p of mesh.processes) {
    const snapshot = snapshotOf(probed.get(p.name), readMemory(p.pid));
    if (snapshot !== undefined) out.set(p.name, snapshot);
  }
  return out;
}

/** Server memory at one moment; after a full GC and a compaction when the probe is there. */
export interface MemorySnapshot {
  rss: number;
  /** Anonymous memory (heaps, malloc) and file-backed pages (code, LMDB's memory map). */
  anon: number | undefined;
  file: number | undefined;
  heapUsed: number | undefined;
  /** The V8 heap's committed pages, live or not (see ProbeSample.heapTotal). */
  heapTotal: number | undefined;
  afterGc: boolean;
}

export async function memorySnapshot(
  server: BenchServer | undefined,
  pid: number | undefined,
): Promise<MemorySnapshot | undefined> {
  const probed = await server?.memoryAfterGc();
  return snapshotOf(probed, pid === undefined ? undefined : readMemory(pid));
}

/** A process's memory: the probe's figures after its GC where it answered, else /proc's alone. */
function snapshotOf(
  probed: ProbeSample | undefined,
  proc: ReturnType<typeof readMemory>,
): MemorySnapshot | undefined {
  if (probed !== undefined) {
    return {
      rss: probed.rss,
      anon: proc?.anon,
      file: proc?.file,
      heapUsed: probed.heapUsed,
      heapTotal: probed.heapTotal,
      afterGc: true,
    };
  }
  return (
    proc && {
      rss: proc.rss,
      anon: proc.anon,
      file: proc.file,
      heapUsed: undefined,
      heapTotal: undefined,
      afterGc: false,
    }
  );
}
