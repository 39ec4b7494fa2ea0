import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmdirSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { ConfigurationError } from "../common/config.js";

/**
 * One server process per data directory. Two processes on one LMDB environment would each run
 * the sequencer for the same conversations from their own memory and hand out the same seqs:
 * LMDB itself lets several processes open one environment, so nothing else would stop them.
 *
 * Why a pid file and not a library: Node.js has no flock/fcntl, the npm modules that add one
 * (fs-ext, os-lock) compile a native addon at install time, and proper-lockfile's only staleness
 * test is an mtime its holder refreshes from a timer, so after a SIGKILL a restart is refused
 * until the lock goes stale (10 s by default), and an event loop blocked past that lets a second
 * process in. Here the kernel answers instead: the file names the holder's pid, its start time
 * (/proc, Linux) and its boot, and a holder that died in any way, SIGKILL included, is found dead
 * at once (kill(pid, 0) fails, or the pid now belongs to a process started later). Only a holder
 * on another host (a shared network volume) cannot be asked; it refreshes the file's mtime every
 * HEARTBEAT_MS and is taken for dead STALE_MS after the last refresh.
 */

/** How often the holder touches the lock file, in milliseconds (for holders on other hosts). */
const HEARTBEAT_MS = 10_000;
/** How long a lock from another host lives past its last heartbeat, in milliseconds. */
const STALE_MS = 45_000;
/** How long a half-finished takeover (a crash between its two steps) blocks others, in milliseconds. */
const GUARD_STALE_MS = 10_000;
/** The lock file's name inside the data directory. */
export const LOCK_FILE = "switchboard.lock";

/** Who holds a data directory, as the lock file says. */
export interface LockHolder {
  /** The holder's process id. */
  pid: number;
  /** The host it runs on (os.hostname()). */
  host: string;
  /** The kernel's boot id (Linux), so a pid from before a reboot is not mistaken for a live one. */
  boot: string;
  /** The process's start time in clock ticks since boot (Linux /proc), so a reused pid is told apart. */
  start: string;
  /** When it took the lock, ISO 8601. */
  since: string;
}

/** A held lock: release it when the process stops. */
export interface DataDirLock {
  /** The lock file's path. */
  readonly path: string;
  /** Removes the lock file if it is still this process's. Safe to call twice. */
  release(): void;
}

/** Directories this process holds, so a second server in the same process is refused too. */
const heldHere = new Set<string>();

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, "utf8").trim();
  } catch {
    return fallback;
  }
}

/** Field 22 of /proc/<pid>/stat (starttime); "" where there is no /proc. */
function processStart(pid: number | "self"): string {
  const stat = readOr(`/proc/${pid}/stat`, "");
  // The command name (field 2) is in parentheses and may contain spaces: count after its end.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields[19] ?? "";
}

function me(): LockHolder {
  return {
    pid: process.pid,
    host: hostname(),
    boot: readOr("/proc/sys/kernel/random/boot_id", ""),
    start: processStart("self"),
    since: new Date().toISOString(),
  };
}

function parse(text: string): LockHolder | undefined {
  try {
    const h = JSON.parse(text) as Partial<LockHolder>;
    if (typeof h.pid !== "number" || typeof h.host !== "string") return undefined;
    return { pid: h.pid, host: h.host, boot: h.boot ?? "", start: h.start ?? "", since: h.since ?? "" };
  } catch {
    return undefined;
  }
}

/** Whether the holder still runs; undefined when this host cannot tell (another host). */
export function holderAlive(holder: LockHolder, self: LockHolder = me()): boolean | undefined {
  if (holder.host !== self.host || (holder.boot !== "" && self.boot !== "" && holder.boot !== self.boot)) {
    // Another host, or this host before a reboot (then it is dead, whatever its pid says).
    return holder.host === self.host ? false : undefined;
  }
  // Our own pid in the file, but not held in this process: a container restarted with the
  // same pid (often 1) after the previous holder died.
  if (holder.pid === self.pid) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else, which is still alive.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  const start = processStart(holder.pid);
  return holder.start === "" || start === "" || start === holder.start;
}

/** Creates the lock file with this process's record; false if one exists. */
function create(path: string, self: LockHolder): boolean {
  let fd: number;
  try {
    fd = openSync(path, "wx", 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
  try {
    writeSync(fd, `${JSON.stringify(self)}\n`);
  } finally {
    closeSync(fd);
  }
  return true;
}

function describe(holder: LockHolder | undefined, dir: string, ageMs: number): string {
  const who = holder
    ? `process ${holder.pid} on ${holder.host}${holder.since ? ` (since ${holder.since})` : ""}`
    : "another process";
  const remote =
    holder && holder.host !== hostname()
      ? `; it is on another host, so it counts as gone ${Math.round(STALE_MS / 1000)} s after it last touched the lock (${Math.round(ageMs / 1000)} s ago)`
      : "";
  return (
    `data directory ${dir} is in use by ${who}: only one server may use a data directory ` +
    `(lock file ${join(dir, LOCK_FILE)}${remote}); stop that server, or give this one another --data-dir`
  );
}

/**
 * Takes the data directory for this process, or throws a ConfigurationError naming the process
 * that holds it. The directory must exist. A lock left by a dead process is taken over.
 */
export function lockDataDir(dir: string, options: { now?: () => number } = {}): DataDirLock {
  const now = options.now ?? Date.now;
  const absolute = resolve(dir);
  const path = join(absolute, LOCK_FILE);
  if (heldHere.has(path)) throw new ConfigurationError(describe(me(), absolute, 0));
  const self = me();
  const mine = `${JSON.stringify(self)}\n`;
  // Bounded: each round either takes the lock, refuses, or saw the file change under it.
  for (let round = 0; round < 5; round++) {
    if (create(path, self)) return hold(path, mine);
    let text: string;
    let mtimeMs: number;
    try {
      text = readFileSync(path, "utf8");
      mtimeMs = statSync(path).mtimeMs;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // released meanwhile
      throw err;
    }
    const holder = parse(text);
    // An unreadable file is one being written right now (create() then write), or garbage a
    // crash left: give a writer the benefit of the doubt for a moment.
    const alive = holder ? holderAlive(holder, self) : now() - mtimeMs < GUARD_STALE_MS;
    const ageMs = now() - mtimeMs;
    if (alive === true || (alive === undefined && ageMs < STALE_MS)) {
      throw new ConfigurationError(describe(holder, absolute, ageMs));
    }
    // Dead: take over under a guard, so two processes replacing the same dead lock cannot both
    // win. Creators of a fresh lock (create()) need no guard: the file exists until the unlink
    // below, and after it the O_EXCL create decides between them and us.
    const guard = `${path}.takeover`;
    try {
      mkdirSync(guard);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const guardStat = statSync(guard, { throwIfNoEntry: false });
      if (guardStat === undefined) continue; // the other takeover just finished
      if (now() - guardStat.mtimeMs <= GUARD_STALE_MS) {
        throw new ConfigurationError(describe(holder, absolute, ageMs));
      }
      // A takeover that crashed between its two steps: clear its guard and try again.
      try {
        rmdirSync(guard);
      } catch {
        // Another process cleared it first.
      }
      continue;
    }
    try {
      if (readOr(path, "") === text.trim()) unlinkSync(path);
    } finally {
      rmdirSync(guard);
    }
  }
  throw new ConfigurationError(describe(undefined, absolute, 0));
}

function hold(path: string, mine: string): DataDirLock {
  heldHere.add(path);
  // Only holders on other hosts are judged by this; the timer must not keep the process alive.
  const heartbeat = setInterval(() => {
    try {
      const t = new Date();
      utimesSync(path, t, t);
    } catch {
      // The file is gone (someone removed it by hand): nothing to refresh.
    }
  }, HEARTBEAT_MS);
  heartbeat.unref();
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    clearInterval(heartbeat);
    heldHere.delete(path);
    process.off("exit", release);
    // Only our own record: never remove a lock some other process took after an operator
    // deleted ours by hand.
    if (readOr(path, "") === mine.trim()) {
      try {
        unlinkSync(path);
      } catch {
        // Already gone.
      }
    }
  };
  // A process that exits without closing the server (an uncaught error) still leaves no lock;
  // after a SIGKILL the next process finds the holder dead instead.
  process.on("exit", release);
  return { path, release };
}
