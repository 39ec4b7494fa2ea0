/**
 * What the launcher tells an operator about each process it runs: enough to bring one back by
 * hand (its command line and environment), with the secrets kept out of the terminal and out of
 * the settings file. The secrets go to a file of their own that only the operator can read.
 */

/** One service process's settings, as the launcher starts it. */
export interface ProcessSettings {
  /** "gateway-0", "sequencer-1", "accounts". */
  name: string;
  /** The roles it runs, comma-separated. */
  roles: string;
  /** Its current PID, if it runs. */
  pid: number | undefined;
  /** Its RPC port. */
  port: number;
  /** Its admin port (/healthz, /readyz, /metrics). */
  adminPort: number;
  /** Its data directory. */
  dataDir: string;
  /** Its log file, when logs go to files. */
  logFile: string | undefined;
  /** The working directory it runs in (the checkout). */
  cwd: string;
  /** The program and its arguments. */
  argv: string[];
  /** The settings the launcher gives it (SWITCHBOARD_*, SCYLLA_*), unredacted. */
  env: Record<string, string>;
}

/** A backend server the launcher started (nats-server, redis-server, the test database). */
export interface BackendSettings {
  name: string;
  pid: number | undefined;
  url: string;
  /** Where it keeps its files, if anywhere. */
  dataDir?: string;
}

// Names that hold a secret: keys (but not public ones), passwords, secrets, credentials, tokens.
const SECRET_NAME = /(?<!PUBLIC)_KEY$|PASSWORD|SECRET|CREDENTIAL|_TOKEN$/;

/** True if the variable's value must not be printed. */
export function isSecret(name: string): boolean {
  return SECRET_NAME.test(name);
}

/** The value as it may be printed: secrets replaced, a password in a URL (redis://:pw@host) too. */
export function redacted(name: string, value: string): string {
  if (isSecret(name)) return "<redacted>";
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^/@\s]*)@/i, (_, scheme: string, userinfo: string) => {
    const user = userinfo.split(":")[0] ?? "";
    return `${scheme}${user}${userinfo.includes(":") ? ":<redacted>" : ""}@`;
  });
}

/** Quotes a word for a POSIX shell when it needs it. */
function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:,=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * The block printed at start and written to the settings file for one process: what it is, where
 * it listens and keeps its data, and the command that starts it again (secrets redacted).
 */
export function describeProcess(p: ProcessSettings): string {
  const env = Object.keys(p.env)
    .sort()
    .map((k) => `  ${k}=${shellWord(redacted(k, p.env[k]!))} \\`);
  return [
    `# ${p.name}: roles ${p.roles}, pid ${p.pid ?? "-"}, rpc port ${p.port}, admin port ${p.adminPort}`,
    `#   data ${p.dataDir}${p.logFile ? `, log ${p.logFile}` : ""}`,
    `cd ${shellWord(p.cwd)} && env \\`,
    ...env,
    `  ${p.argv.map(shellWord).join(" ")}`,
  ].join("\n");
}

/** One line for a backend server. */
export function describeBackend(b: BackendSettings): string {
  return `# ${b.name}: ${redacted("URL", b.url)}, pid ${b.pid ?? "-"}${b.dataDir ? `, data ${b.dataDir}` : ""}`;
}

/** The secrets of every process, as `NAME=value` lines for a file only its owner may read. */
export function secretLines(processes: readonly ProcessSettings[]): string[] {
  const seen = new Map<string, string>();
  for (const p of processes) {
    for (const [k, v] of Object.entries(p.env)) if (isSecret(k)) seen.set(k, v);
  }
  return [...seen].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${shellWord(v)}`);
}
