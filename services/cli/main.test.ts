import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type Finished, runSwitchboard } from "../../test/helpers/process.js";

const _root = join(import.meta.dirname, "../..");

/** Runs the switchboard command with only the given settings (none inherited). */
function switchboard(args: readonly string[], settings: Record<string, string>): Promise<Finished> {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(SWITCHBOARD|SCYLLA)_/.test(k)),
  );
  return runSwitchboard(args, { ...inherited, ...settings });
}

describe("switchboard with a setting it cannot use", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "switchboard-cli-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("prints the message naming the setting, and exits 1 before listening", async () => {
    const cases: Array<[string[], Record<string, string>, string]> = [
      [
        ["start", "--data-dir", dir],
        { SWITCHBOARD_SEND_BURST: "lots" },
        "switchboard: configuration: SWITCHBOARD_SEND_BURST must be a non-negative integer, got lots\n",
      ],
      [
        ["start", "--data-dir", dir, "--role", "gateway"],
        {},
        "switchboard: configuration: SWITCHBOARD_TOKEN_KEY is required when roles run in separate processes (all of them must share it)\n",
      ],
      [
        ["start", "--data-dir", dir],
        { SWITCHBOARD_MEDIA_STORE: "s3" },
        'switchboard: SWITCHBOARD_MEDIA_STORE must be "local" or "minio", got "s3"\n',
      ],
      [
        ["migrate"],
        {},
        "switchboard: SCYLLA_CONTACT_POINTS is not set; give a comma-separated list of host or host:port\n",
      ],
    ];
    const missingKey = join(dir, "no-such-apns-key.p8");
    cases.push([
      ["start", "--data-dir", dir],
      {
        // Free ports, in case the process got as far as listening (it must not).
        SWITCHBOARD_PORT: "0",
        SWITCHBOARD_MEDIA_PORT: "0",
        SWITCHBOARD_ADMIN_PORT: "0",
        SWITCHBOARD_APNS_TEAM_ID: "TEAM123456",
        SWITCHBOARD_APNS_KEY_ID: "KEY1234567",
        SWITCHBOARD_APNS_KEY_FILE: missingKey,
      },
      `switchboard: configuration: cannot read the APNs key at ${missingKey}: ENOENT: no such file or directory, open '${missingKey}'\n`,
    ]);
    for (const [args, settings, message] of cases) {
      const run = await switchboard(args, settings);
      // The last line: a process that got as far as starting its roles has logged before it.
      assert.equal(`${run.stderr.trimEnd().split("\n").at(-1)}\n`, message, args.join(" "));
      assert.equal(run.code, 1);
      assert.doesNotMatch(run.stdout, /listening/);
    }
  });

  it("names a settings file's bad key, and lets the environment win over the file", async () => {
    const file = join(dir, "settings.json");
    await writeFile(file, JSON.stringify({ SWITCHBOARD_PORT: 1, port: 2 }));
    const bad = await switchboard(["start", "--config", file, "--data-dir", dir], {});
    assert.equal(
      bad.stderr,
      `switchboard: settings file ${file}: "port" is not a setting name (SWITCHBOARD_* or SCYLLA_*)\n`,
    );
    assert.equal(bad.code, 1);
    await writeFile(file, JSON.stringify({ SWITCHBOARD_SEND_BURST: "lots", SWITCHBOARD_FRAME_BURST: "x" }));
    const overridden = await switchboard(["start", "--config", file, "--data-dir", dir], {
      SWITCHBOARD_SEND_BURST: "5",
    });
    assert.equal(
      overridden.stderr,
      "switchboard: configuration: SWITCHBOARD_FRAME_BURST must be a non-negative integer, got x\n",
    );
  });
});
