import { open, type RootDatabase } from "lmdb";

/**
 * Runs fn as one abortable unit inside the next group-committed transaction, on this thread: how
 * the account and key ports write (engine.ts, "Writes"; the conversation port's writes go to the
 * write thread instead).
 */
export type WriteUnit = <T>(fn: () => T) => Promise<T>;

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
