#!/usr/bin/env node
// The container image without a Docker engine: carries out the Dockerfile's stages on directory
// trees (each stage's / is a temporary folder; COPY honours .dockerignore; RUN runs in the stage's
// WORKDIR with its ENV) and checks what the runtime stage holds:
// - the Dockerfile: a Node LTS line still supported today, a slim runtime base, a numeric
//   non-root USER, a HEALTHCHECK in exec form, the entry point node <flags> bin/switchboard.js;
// - the tree: the compiled build and no sources, no development package (tsx, typescript, biome,
//   every devDependency), native binaries for this machine only (ELF of this architecture, this
//   C library's builds, this platform's prebuilds/ folder);
// - it runs: `--version` and `--help`, then `start` with the image's settings, answering the
//   HEALTHCHECK command (exit 0) until it is stopped (then exit 1).
// The runtime stage's RUN lines change only the base image's files (the data directory, npm's
// removal), which this host must not: they are checked against RUNTIME_SYSTEM_STEPS, not run.
//
//   node .ci/check-image.mjs [--keep] [--node <binary>]
// (a step of .ci/run; --keep leaves the trees to look at; --node runs the tree with another Node,
// such as the image's version, instead of this one)
import { spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const keep = process.argv.includes("--keep");
const nodeAt = process.argv.indexOf("--node");
const nodeBin = nodeAt === -1 ? process.execPath : process.argv[nodeAt + 1];
const problems = [];
const problem = (message) => {
  problems.push(message);
  console.error(`  PROBLEM: ${message}`);
};
const say = (line) => console.log(line);

// Node release lines with long-term support, and the day each one's support ends.
const NODE_LTS_END = { 22: "2027-04-30", 24: "2028-04-30", 26: "2029-04-30" };
// What the runtime stage may RUN (each && part): the data directory and removing the package managers.
const RUNTIME_SYSTEM_STEPS = [
  /^mkdir -p \/data$/,
  /^chown \d+:\d+ \/data$/,
  /^rm -rf( (\/usr\/local\/(bin|lib\/node_modules)\/[\w.-]+|\/opt\/yarn-\*))+$/,
];
// Development tools that must never reach the image, besides every devDependency.
const DEV_TOOLS = ["tsx", "typescript", "@biomejs/biome", "esbuild", "@bufbuild/buf", "dependency-cruiser"];
// ELF e_machine of each Node architecture.
const ELF_MACHINE = { x64: 62, arm64: 183, arm: 40, ia32: 3, ppc64: 21, s390x: 22 };

/** The Dockerfile as instructions: continuation lines joined, comments dropped, flags split off. */
function parseDockerfile(text) {
  const instructions = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw)) continue;
    const line = raw.replace(/\s+$/, "");
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const whole = (pending + line).trim();
    pending = "";
    if (whole === "") continue;
    const [, keyword, rest] = /^(\S+)\s*(.*)$/s.exec(whole);
    const flags = {};
    let body = rest;
    for (let m = /^--([\w-]+)=(\S+)\s+/.exec(body); m; m = /^--([\w-]+)=(\S+)\s+/.exec(body)) {
      flags[m[1]] = m[2];
      body = body.slice(m[0].length);
    }
    instructions.push({
      keyword: keyword.toUpperCase(),
      flags,
      body: body.replace(/\s+/g, " ").trim(),
      raw: whole,
    });
  }
  return instructions;
}

/** .dockerignore as a predicate on context-relative paths (Docker's rules: anchored at the root, ** for any depth, ! re-includes). */
function dockerignore() {
  const path = join(root, ".dockerignore");
  const rules = (existsSync(path) ? readFileSync(path, "utf8") : "")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => {
      const negate = l.startsWith("!");
      const pattern = (negate ? l.slice(1) : l).replace(/^\/+|\/+$/g, "");
      const regex = pattern
        .split("/")
        .map((part) =>
          part === "**"
            ? ".*"
            : part
                .replace(/[.+^${}()|[\]\\]/g, "\\$&")
                .replace(/\*/g, "[^/]*")
                .replace(/\?/g, "[^/]"),
        )
        .join("/");
      return { negate, regex: new RegExp(`^${regex}(/.*)?$`) };
    });
  return (rel) => {
    let ignored = false;
    for (const r of rules) if (r.regex.test(rel)) ignored = !r.negate;
    return ignored;
  };
}

/** Durations as Docker writes them (30s, 1m30s). */
const validDuration = (d) => /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/.test(d);

function parseEnv(body, env) {
  if (!body.includes("=")) {
    const [k, ...v] = body.split(" ");
    env[k] = v.join(" ");
    return;
  }
  for (const m of body.matchAll(/([A-Za-z_][\w]*)=("[^"]*"|\S*)/g)) env[m[1]] = m[2].replace(/^"|"$/g, "");
}

function run(command, options) {
  const r = spawnSync("sh", ["-c", command], {
    ...options,
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
    timeout: 300_000,
  });
  if (r.status !== 0) {
    console.error(`${r.stdout ?? ""}${r.stderr ?? ""}`.split("\n").slice(-40).join("\n"));
    throw new Error(`RUN ${command} failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ""})`);
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
const started = Date.now();
const dockerfile = parseDockerfile(readFileSync(join(root, "Dockerfile"), "utf8"));
const args = {};
const stages = [];
for (const ins of dockerfile) {
  if (ins.keyword === "ARG" && stages.length === 0) {
    const [name, value = ""] = ins.body.split("=");
    args[name] = value;
  } else if (ins.keyword === "FROM") {
    const [image, , name] = ins.body.replace(/\$\{?(\w+)\}?/g, (_, n) => args[n] ?? "").split(" ");
    stages.push({ name: name ?? String(stages.length), image, instructions: [] });
  } else if (stages.length === 0) {
    problem(`${ins.keyword} before the first FROM`);
  } else {
    stages.at(-1).instructions.push(ins);
  }
}

say("== the Dockerfile");
const today = new Date().toISOString().slice(0, 10);
for (const s of stages) {
  const m = /^node:(\d+)(\.[\d.]+)?-(bookworm|trixie)(-slim)?$/.exec(s.image);
  if (!m) {
    problem(`stage ${s.name}: base ${s.image} is not node:<LTS>-bookworm[-slim] (or trixie)`);
    continue;
  }
  const end = NODE_LTS_END[m[1]];
  if (end === undefined)
    problem(
      `stage ${s.name}: Node ${m[1]} is not a long-term-support line (${Object.keys(NODE_LTS_END).join(", ")})`,
    );
  else if (end < today)
    problem(`stage ${s.name}: Node ${m[1]} reached its end of life on ${end}: move to a supported LTS line`);
  else say(`stage ${s.name}: ${s.image} (Node ${m[1]} supported until ${end})`);
}
const runtime = stages.at(-1);
if (!/-slim$/.test(runtime.image)) problem(`the runtime stage's base ${runtime.image} is not a -slim image`);
const last = (keyword) => runtime.instructions.filter((i) => i.keyword === keyword).at(-1);
const user = last("USER");
if (!user || !/^[1-9]\d*(:\d+)?$/.test(user.body))
  problem(
    `the runtime stage's USER is ${user?.body ?? "unset"}: a numeric non-root uid is needed (runAsNonRoot)`,
  );
// `node`, the server's V8 flags (services/server/node-flags.ts; node-flags.test.ts holds them to
// that list), then bin/switchboard.js. The tree is run below with those flags.
const entrypoint = last("ENTRYPOINT");
let nodeFlags = [];
{
  let argv;
  try {
    argv = JSON.parse(entrypoint?.body ?? "null");
  } catch {}
  const flags = Array.isArray(argv) ? argv.slice(1, -1) : [];
  if (
    !Array.isArray(argv) ||
    argv[0] !== "node" ||
    argv.at(-1) !== "bin/switchboard.js" ||
    !flags.every((f) => typeof f === "string" && f.startsWith("--"))
  )
    problem(`ENTRYPOINT is ${entrypoint?.body}, not ["node", <node flags>..., "bin/switchboard.js"]`);
  else nodeFlags = flags;
}
const healthcheck = last("HEALTHCHECK");
let healthArgv;
if (!healthcheck) problem("the runtime stage has no HEALTHCHECK");
else {
  for (const [flag, value] of Object.entries(healthcheck.flags)) {
    if (["interval", "timeout", "start-period", "start-interval"].includes(flag) && !validDuration(value))
      problem(`HEALTHCHECK --${flag}=${value} is not a duration`);
    if (flag === "retries" && !/^\d+$/.test(value)) problem(`HEALTHCHECK --retries=${value} is not a count`);
  }
  const cmd = /^CMD (\[.*\])$/.exec(healthcheck.body);
  try {
    healthArgv = JSON.parse(cmd?.[1] ?? "");
  } catch {
    problem(`HEALTHCHECK is not CMD in exec form (a JSON array): ${healthcheck.body}`);
  }
  if (healthArgv?.[0] === "node" && healthArgv[1] === "-e") {
    // It must at least parse as JavaScript; running it against a server comes below.
    const syntax = spawnSync(process.execPath, ["--check", "-"], { input: healthArgv[2], encoding: "utf8" });
    if (syntax.status !== 0) problem(`the HEALTHCHECK's script does not parse: ${syntax.stderr}`);
  }
}

say("\n== the stages, on directory trees");
const ignored = dockerignore();
const tmp = mkdtempSync(join(tmpdir(), "switchboard-image-"));
const fsRoot = (stage) => join(tmp, stage.name);
let runtimeEnv = {};
try {
  for (const stage of stages) {
    const env = {};
    let workdir = "/";
    mkdirSync(fsRoot(stage), { recursive: true });
    const inStage = (path) => join(fsRoot(stage), path.startsWith("/") ? path : join(workdir, path));
    for (const ins of stage.instructions) {
      const t0 = Date.now();
      switch (ins.keyword) {
        case "WORKDIR":
          workdir = ins.body.startsWith("/") ? ins.body : join(workdir, ins.body);
          mkdirSync(inStage(workdir), { recursive: true });
          break;
        case "ENV":
          parseEnv(ins.body, env);
          break;
        case "COPY": {
          const parts = ins.body.split(" ");
          const dest = parts.pop();
          const from =
            ins.flags.from === undefined ? undefined : stages.find((s) => s.name === ins.flags.from);
          if (ins.flags.from !== undefined && from === undefined)
            throw new Error(`COPY --from=${ins.flags.from}: no such stage`);
          for (const src of parts) {
            const source = from ? join(fsRoot(from), src) : join(root, src);
            if (!from && ignored(src.replace(/^\.\//, "")))
              throw new Error(`COPY ${src}: excluded by .dockerignore, so Docker would not find it`);
            if (!existsSync(source))
              throw new Error(
                `COPY ${src}: not found${from ? ` in stage ${from.name}` : " in the build context"}`,
              );
            const intoDir =
              dest.endsWith("/") ||
              parts.length > 1 ||
              (existsSync(inStage(dest)) &&
                statSync(inStage(dest)).isDirectory() &&
                !statSync(source).isDirectory());
            const target = intoDir ? join(inStage(dest), basename(src)) : inStage(dest);
            mkdirSync(dirname(target), { recursive: true });
            cpSync(source, target, {
              recursive: true,
              verbatimSymlinks: true,
              filter: (p) => from !== undefined || !ignored(relative(root, p)),
            });
          }
          break;
        }
        case "RUN":
          if (stage === runtime) {
            for (const step of ins.body.split("&&").map((s) => s.trim().replace(/\s+/g, " "))) {
              if (!RUNTIME_SYSTEM_STEPS.some((r) => r.test(step)))
                problem(
                  `runtime stage: RUN ${step} is not reproduced here; if it changes only the base image's files, add it to RUNTIME_SYSTEM_STEPS`,
                );
            }
            say(`${stage.name}: RUN (base image files only, checked not run) ${ins.body}`);
            continue;
          }
          // RUN uses this host's npm cache (fast, offline); a step that would change the host is refused.
          if (/npm cache clean|(^|\s)\/(?!app\b)/.test(ins.body))
            throw new Error(
              `RUN ${ins.body}: would change this host's files (npm's cache, an absolute path); a build stage's RUN here must stay inside its WORKDIR`,
            );
          run(ins.body, {
            cwd: inStage(workdir),
            // Packages already in the cache are not asked about again (.ci/run's install filled it).
            env: { ...process.env, npm_config_prefer_offline: "true", ...env },
          });
          break;
        case "USER":
        case "EXPOSE":
        case "HEALTHCHECK":
        case "ENTRYPOINT":
        case "CMD":
        case "LABEL":
        case "ARG":
          continue;
        default:
          throw new Error(
            `${ins.keyword}: .ci/check-image.mjs does not know this instruction; teach it, or keep to the ones it knows`,
          );
      }
      say(
        `${stage.name}: ${ins.raw.length > 110 ? `${ins.raw.slice(0, 107)}...` : ins.raw}  (${((Date.now() - t0) / 1000).toFixed(1)} s)`,
      );
    }
    if (stage === runtime) runtimeEnv = env;
  }

  const app = join(fsRoot(runtime), "app");
  say(`\n== the runtime tree (${app})`);
  const du = spawnSync("du", ["-sh", app, join(app, "node_modules")], { encoding: "utf8" })
    .stdout.trim()
    .replace(/\n/g, "; ");
  say(`size: ${du}`);
  if (!existsSync(join(app, "dist/services/cli/main.js")))
    problem("no dist/services/cli/main.js: the build is missing");
  for (const dir of ["services", "sdk", "gen"])
    if (existsSync(join(app, dir))) problem(`${dir}/ (sources) is in the image`);
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  for (const name of new Set([...Object.keys(pkg.devDependencies ?? {}), ...DEV_TOOLS])) {
    if (existsSync(join(app, "node_modules", name)))
      problem(`node_modules/${name}, a development package, is in the image`);
  }
  // Native code: every .node file an ELF for this architecture, no other C library's, no other platform's prebuilds.
  const libc = process.report.getReport().header.glibcVersionRuntime ? "glibc" : "musl";
  let natives = 0;
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, e.name);
      const rel = relative(app, path);
      if (e.isDirectory()) {
        if (basename(dir) === "prebuilds" && e.name !== `${process.platform}-${process.arch}`)
          problem(`${rel}: another platform's prebuilds`);
        walk(path);
      } else if (e.isFile() && e.name.endsWith(".node")) {
        natives++;
        const header = Buffer.alloc(20);
        const fd = openSync(path, "r");
        readSync(fd, header, 0, 20, 0);
        closeSync(fd);
        if (header.readUInt32BE(0) !== 0x7f454c46)
          problem(`${rel}: not an ELF binary (another platform's build)`);
        else if (header.readUInt16LE(18) !== ELF_MACHINE[process.arch])
          problem(`${rel}: an ELF binary for another architecture (e_machine ${header.readUInt16LE(18)})`);
        if (e.name.includes(libc === "glibc" ? ".musl." : ".glibc."))
          problem(`${rel}: a build for the other C library`);
      }
    }
  };
  walk(join(app, "node_modules"));
  say(`native binaries: ${natives}, all ELF ${process.arch} (${libc})`);

  const nodeVersion = spawnSync(nodeBin, ["--version"], { encoding: "utf8" }).stdout.trim();
  say(
    `\n== it runs (with Node ${nodeVersion} and the ENTRYPOINT's flags ${nodeFlags.join(" ")}; the image has Node ${args.NODE_VERSION})`,
  );
  const home = join(tmp, "home");
  mkdirSync(home);
  // The image's settings, on loopback (this host is not a container) and a free admin port.
  const freePort = () =>
    new Promise((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const { port } = s.address();
        s.close(() => resolve(port));
      });
    });
  const env = {
    PATH: process.env.PATH,
    HOME: home,
    ...runtimeEnv,
    SWITCHBOARD_HOST: "127.0.0.1",
    SWITCHBOARD_DATA_DIR: join(tmp, "data"),
    SWITCHBOARD_ADMIN_PORT: String(await freePort()),
    // Any free port for the media URLs too: never the default 7422 (a developer's server may hold it).
    SWITCHBOARD_MEDIA_PORT: "0",
  };
  const cli = (...a) =>
    spawnSync(nodeBin, [...nodeFlags, "bin/switchboard.js", ...a], {
      cwd: app,
      env,
      encoding: "utf8",
      timeout: 30_000,
    });
  const version = cli("--version");
  if (version.status !== 0 || version.stdout.trim() !== pkg.version)
    problem(`switchboard --version: exit ${version.status}, "${version.stdout.trim()}" ${version.stderr}`);
  else say(`switchboard --version: ${version.stdout.trim()}`);
  const help = cli("--help");
  if (help.status !== 0 || !/\bstart\b/.test(help.stdout))
    problem(`switchboard --help: exit ${help.status} ${help.stderr}`);
  else say(`switchboard --help: ${help.stdout.split("\n").length} lines`);

  if (healthArgv !== undefined) {
    const probe = () =>
      spawnSync(healthArgv[0] === "node" ? nodeBin : healthArgv[0], healthArgv.slice(1), {
        cwd: app,
        env,
        encoding: "utf8",
        timeout: 30_000,
      }).status;
    const server = spawn(
      nodeBin,
      [...nodeFlags, "bin/switchboard.js", ...JSON.parse(last("CMD")?.body ?? '["start"]'), "--port", "0"],
      { cwd: app, env, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    const listening = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 60_000);
      const read = (d) => {
        output += d;
        if (output.includes("switchboard listening on")) {
          clearTimeout(timer);
          resolve(true);
        }
      };
      server.stdout.setEncoding("utf8").on("data", read);
      server.stderr.setEncoding("utf8").on("data", read);
      server.once("exit", () => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    if (!listening)
      problem(`switchboard start from the image's tree did not listen within 60 s:\n${output.slice(-3000)}`);
    else {
      say(output.split("\n").find((l) => l.includes("switchboard listening on")));
      const up = probe();
      if (up !== 0) problem(`the HEALTHCHECK failed (exit ${up}) against a running server`);
      else say("HEALTHCHECK against the running server: exit 0");
    }
    server.kill("SIGTERM");
    const stopped = await new Promise((resolve) => {
      if (server.exitCode !== null) return resolve(true);
      const timer = setTimeout(() => resolve(false), 30_000);
      server.once("exit", () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    if (!stopped) {
      server.kill("SIGKILL");
      problem("switchboard start did not stop within 30 s of SIGTERM");
    }
    const down = probe();
    if (down === 0) problem("the HEALTHCHECK passed with no server running: it checks nothing");
    else say(`HEALTHCHECK with the server stopped: exit ${down}`);
  }
} catch (err) {
  problem(err instanceof Error ? err.message : String(err));
} finally {
  if (keep) say(`\ntrees kept in ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
}

say(
  `\ncheck-image: ${problems.length === 0 ? "ok" : `${problems.length} problem(s)`} in ${((Date.now() - started) / 1000).toFixed(0)} s`,
);
if (problems.length > 0) {
  for (const p of problems) console.error(`  ${p}`);
  process.exit(1);
}
