// What end-to-end encryption costs a client: the SDK's own Signal layer (sdk/crypto) on on-disk
// profile stores in a temporary directory, exactly as an app runs it (every state change is
// fsynced before a call resolves). Bundles come from the SDK's in-memory key directory, filled
// with the SDK's own key generation. No server: it never encrypts or decrypts anything.
// Results and their reading: docs/benchmarks.md, "End-to-end encryption cost".
// The parts, in bench/crypto/: plan.ts (what a run does), measure.ts (timed loops, tables),
// devices.ts (a device's ciphers on its profile directory), pairwise.ts, groups.ts and
// attachments.ts (each scenario with its report).
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { attachments, reportAttachments } from "./crypto/attachments.js";
import { groupOfSize, reportGroups } from "./crypto/groups.js";
import { now, since, table } from "./crypto/measure.js";
import { pairwise, reportPairwise } from "./crypto/pairwise.js";
import { FULL, MESSAGE_BYTES, QUICK } from "./crypto/plan.js";

const USAGE = `npm run bench:crypto [-- --quick]

  --quick   a smoke run: few iterations, groups up to 10 members, attachments of 1 and 8 MiB
  --help    this text
`;

function machine(): string[] {
  const info = readFileSync("/proc/cpuinfo", "utf8");
  const field = (name: string) => new RegExp(`^${name}\\s*: (.*)$`, "m").exec(info)?.[1] ?? "?";
  const libsignal = JSON.parse(
    readFileSync(
      new URL("../node_modules/@signalapp/libsignal-client/package.json", import.meta.url),
      "utf8",
    ),
  ) as { version: string };
  return [
    `CPU: ${cpus().length} × ${field("model name")} (family ${field("cpu family")}, model ${field("model")})`,
    `Node ${process.version}, libsignal-client ${libsignal.version}, Linux ${release()}`,
  ];
}

/** CPU seconds the whole machine spent busy so far (/proc/stat, USER_HZ = 100). */
function machineBusySeconds(): number {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = ticks.map(Number) as number[];
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { quick: { type: "boolean", default: false }, help: { type: "boolean", default: false } },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const p = values.quick ? QUICK : FULL;
  const root = await mkdtemp(join(tmpdir(), "sb-bench-crypto-"));
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ");
  console.log(
    `# End-to-end encryption cost${values.quick ? " (--quick: a smoke run, not for numbers)" : ""}\n`,
  );
  for (const line of [...machine(), `profiles in ${root}`, `load average at start: ${load()}`])
    console.log(`- ${line}`);
  const memory: string[][] = [];
  const mark = (section: string) => {
    const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;
    memory.push([section, mib(process.memoryUsage().rss / 1024), mib(process.resourceUsage().maxRSS)]);
  };
  const started = now();
  const busy = machineBusySeconds();
  const cpuAtStart = process.cpuUsage();
  try {
    const message = new Uint8Array(randomBytes(MESSAGE_BYTES));
    reportPairwise(await pairwise(root, p, message));
    mark("pairwise");
    const groups = [];
    for (const size of p.groupSizes) {
      groups.push(await groupOfSize(root, p, size, message));
      mark(`groups of ${size}`);
    }
    reportGroups(groups);
    reportAttachments(await attachments(root, p, mark));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  table("Memory (RSS)", ["after", "now", "peak so far"], memory);
  const wall = since(started) / 1e6;
  const own = process.cpuUsage(cpuAtStart);
  const other = (machineBusySeconds() - busy - (own.user + own.system) / 1e6) / wall;
  console.log(`\n- load average at end: ${load()}; took ${wall.toFixed(0)} s`);
  console.log(`- CPU used by other programs meanwhile: ${(other * 100).toFixed(0)} % (100 % = one core)`);
}

await main();
