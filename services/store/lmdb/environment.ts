import { open, type RootDatabase } from "lmdb";

/**
 * Opens the LMDB environment in a directory with the engine's settings. The engine and its write
 * thread's worker (write-worker.ts) both open it; lmdb-js shares one environment between the
 * threads of a process, so both see the same data and take turns at LMDB's single writer lock.
 */
export function openEnvironment(path: string, mapSizeBytes: number | undefined): RootDatabase {
  return open({
    path,
    // Without this, a path with a dot in it would be taken for a file name.
    noSubdir: false,
    maxDbs: 32,
    // See "Storage faults" in engine.ts: its batches start with a write promise nobody can observe.
    eventTurnBatching: false,
    ...(mapSizeBytes !== undefined ? { mapSize: mapSizeBytes } : {}),
  });
}
