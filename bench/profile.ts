/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`, e.g. the server started with
 * `--server-node-options "--cpu-prof --cpu-prof-dir=DIR"`): self time by function and by
 * package or project file, and inclusive time of the project's own functions.
 *
 *   npx tsx bench/profile.ts DIR/CPU.*.cpuprofile [--top 30] [--from S] [--to S] [--stalls MS]
 *
 * --from/--to keep only the samples between those seconds of the profile (the bench's measured
 * window, without start-up and registration); --stalls lists the stretches in which the thread never
 * went idle for MS or more, with the project functions that took most of each, since an event-loop
 * stall is one long stretch of busy samples.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const root = new URL("../", import.meta.url).href;

/** A short place name: the npm package, the project file, or node's internals. */
function placeOf(url: string): string {
  if (url === "") return "(native / V8)";
  if (url.startsWith("data:")) return "(bench probe)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1]!;
  if (url.startsWith("node:")) return "node internals";
  if (url.startsWith(root)) return url.slice(root.length);
  return url;
}

function keyOf(n: ProfileNode): string {
  const f = n.callFrame;
  const place = f.url.startsWith(root) ? f.url.slice(root.length) : placeOf(f.url);
  return `${f.functionName || "(anonymous)"}  ${place}${f.url ? `:${f.lineNumber + 1}` : ""}`;
}

function main(): void {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      top: { type: "string", default: "30" },
      from: { type: "string", default: "0" },
      to: { type: "string", default: "Infinity" },
      stalls: { type: "string" },
    },
  });
  const top = Number(values.top);
  const fromUs = Number(values.from) * 1e6;
  const toUs = Number(values.to) * 1e6;
  for (const file of positionals) {
    const p = JSON.parse(readFileSync(file, "utf8")) as Profile;
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const self = new Map<number, number>();
    let at = 0;
    p.samples.forEach((id, i) => {
      at += p.timeDeltas[i] ?? 0;
      if (at < fromUs || at > toUs) return;
      self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    const idle = [...self]
      .filter(([id]) => byId.get(id)?.callFrame.functionName === "(idle)")
      .reduce((a, [, t]) => a + t, 0);
    const busy = total - idle;

    const selfByFn = new Map<string, number>();
    const selfByPlace = new Map<string, number>();
    const selfByFile = new Map<string, number>();
    for (const [id, t] of self) {
      const n = byId.get(id)!;
      if (n.callFrame.functionName === "(idle)") continue;
      selfByFn.set(keyOf(n), (selfByFn.get(keyOf(n)) ?? 0) + t);
      const place = n.callFrame.functionName.startsWith("(")
        ? n.callFrame.functionName
        : placeOf(n.callFrame.url);
      selfByPlace.set(place, (selfByPlace.get(place) ?? 0) + t);
      const file =
        n.callFrame.url
          .replace(/^.*node_modules\//, "")
          .replace(root, "")
          .replace("/dist/esm/", "/") || place;
      selfByFile.set(file, (selfByFile.get(file) ?? 0) + t);
    }

    // Inclusive time of project functions: each sample counts once per distinct function on its stack.
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const inclusive = new Map<string, number>();
    for (const [id, t] of self) {
      const seen = new Set<string>();
      for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
        const n = byId.get(cur)!;
        if (!n.callFrame.url.startsWith(root) || n.callFrame.url.includes("node_modules")) continue;
        const k = keyOf(n);
        if (seen.has(k)) continue;
        seen.add(k);
        inclusive.set(k, (inclusive.get(k) ?? 0) + t);
      }
    }

    const pct = (t: number) => `${((100 * t) / busy).toFixed(1).padStart(5)} %`;
    const print = (title: string, m: Map<string, number>) => {
      console.log(`\n${title}`);
      for (const [k, t] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(t)}  ${k}`);
    };
    console.log(
      `${file}: ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s profiled, main thread busy ${((100 * busy) / total).toFixed(1)} % (percentages below are of busy time)`,
    );
    print("self time by package / file", selfByPlace);
    print("self time by file", selfByFile);
    print("self time by function", selfByFn);
    print("inclusive time of project functions", inclusive);
    if (values.stalls !== undefined) printStalls(p, byId, parent, Number(values.stalls), fromUs, toUs);
  }
}

/** Busy stretches of at least `minMs` (no idle sample inside), each with its heaviest project functions. */
function printStalls(
  p: Profile,
  byId: Map<number, ProfileNode>,
  parent: Map<number, number>,
  minMs: number,
  fromUs: number,
  toUs: number,
): void {
  console.log(`\nbusy stretches of ${minMs} ms or more`);
  let at = 0;
  let start = -1;
  let ids: number[] = [];
  const flush = (end: number) => {
    if (start >= 0 && (end - start) / 1000 >= minMs) {
      const inclusive = new Map<string, number>();
      for (const id of ids) {
        const seen = new Set<string>();
        for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
          const n = byId.get(cur)!;
          const k =
            n.callFrame.url.startsWith(root) && !n.callFrame.url.includes("node_modules")
              ? keyOf(n)
              : n.callFrame.functionName.startsWith("(")
                ? n.callFrame.functionName
                : "";
          if (k === "" || seen.has(k)) continue;
          seen.add(k);
          inclusive.set(k, (inclusive.get(k) ?? 0) + 1);
        }
      }
      const heaviest = [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, 6);
      console.log(`  at ${(start / 1e6).toFixed(2)} s: ${((end - start) / 1000).toFixed(0)} ms`);
      for (const [k, n] of heaviest)
        console.log(`      ${((100 * n) / ids.length).toFixed(0).padStart(3)} %  ${k}`);
    }
    start = -1;
    ids = [];
  };
  p.samples.forEach((id, i) => {
    at += p.timeDeltas[i] ?? 0;
    if (at < fromUs || at > toUs) return;
    if (byId.get(id)?.callFrame.functionName === "(idle)") {
      flush(at);
      return;
    }
    if (start < 0) start = at;
    ids.push(id);
  });
  flush(at);
}

main();
