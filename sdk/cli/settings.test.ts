import assert from "node:assert/strict";
import { homedir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, it } from "node:test";
import { cliEnvironment, DEFAULT_SERVER, namedServer, profileFor, serverFor } from "./settings.js";

describe("CLI settings: flag, then variable, then default", () => {
  const saved = { url: process.env.SWITCHBOARD_URL, profile: process.env.SWITCHBOARD_PROFILE };
  afterEach(() => {
    for (const [name, value] of [
      ["SWITCHBOARD_URL", saved.url],
      ["SWITCHBOARD_PROFILE", saved.profile],
    ] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it("reads the two variables, and only when asked", () => {
    assert.deepEqual(cliEnvironment({ SWITCHBOARD_URL: "http://a:1", SWITCHBOARD_PROFILE: "/p" }), {
      serverUrl: "http://a:1",
      profileDir: "/p",
    });
    assert.deepEqual(cliEnvironment({}), { serverUrl: undefined, profileDir: undefined });
    process.env.SWITCHBOARD_URL = "http://set-late:2";
    assert.equal(namedServer({}), "http://set-late:2", "a variable set after import is heard");
  });

  it("lets --server win over SWITCHBOARD_URL; without either a new profile gets the default", () => {
    process.env.SWITCHBOARD_URL = "http://env:3";
    assert.equal(serverFor({ server: "http://flag:4" }), "http://flag:4");
    assert.equal(serverFor({}), "http://env:3");
    delete process.env.SWITCHBOARD_URL;
    assert.equal(namedServer({}), undefined, "an existing profile keeps its own server");
    assert.equal(serverFor({}), DEFAULT_SERVER);
  });

  it("lets --profile win over SWITCHBOARD_PROFILE, else ~/.switchboard/profile", () => {
    process.env.SWITCHBOARD_PROFILE = "/from/env";
    assert.equal(profileFor({ profile: "/from/flag" }), "/from/flag");
    assert.equal(profileFor({}), "/from/env");
    delete process.env.SWITCHBOARD_PROFILE;
    assert.equal(profileFor({}), join(homedir(), ".switchboard", "profile"));
  });
});
