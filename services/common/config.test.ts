import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigurationError, loadConfig, readSettingsFile } from "./config.js";

const KEY = Buffer.alloc(32, 7).toString("base64url");
/** What every process of a split deployment shares. */
const SPLIT = {
  SWITCHBOARD_TOKEN_KEY: KEY,
  SWITCHBOARD_NATS_URL: "nats://127.0.0.1:4222",
  SWITCHBOARD_REDIS_URL: "redis://127.0.0.1:6379",
};

describe("mesh configuration", () => {
  it("runs every role on the embedded engines by default", () => {
    const { mesh } = loadConfig({}, {});
    assert.deepEqual(mesh.roles, [
      "gateway",
      "accounts",
      "sequencer",
      "fanout",
      "presence",
      "notification",
      "media",
    ]);
    assert.equal(mesh.store, "lmdb");
    assert.equal(mesh.bus, "memory");
    assert.equal(mesh.routes, "memory");
    assert.equal(mesh.adminPort, undefined);
  });

  it("picks the distributed engines from their addresses and expands the sequencer template", () => {
    const { mesh } = loadConfig(
      {},
      {
        ...SPLIT,
        SWITCHBOARD_ROLES: "gateway",
        SWITCHBOARD_SEQUENCER_REPLICAS: "3",
        SWITCHBOARD_SEQUENCER_URL_TEMPLATE: "http://seq-{ordinal}.seq:7420",
        SWITCHBOARD_ACCOUNTS_URL: "http://accounts:7420/",
        SWITCHBOARD_PRESENCE_URL: "http://presence:7420",
      },
    );
    assert.equal(mesh.bus, "nats");
    assert.equal(mesh.routes, "redis");
    assert.deepEqual(mesh.urls.sequencers, [
      "http://seq-0.seq:7420",
      "http://seq-1.seq:7420",
      "http://seq-2.seq:7420",
    ]);
    assert.equal(mesh.urls.accounts, "http://accounts:7420");
  });

  it("takes a sequencer's ordinal from a StatefulSet hostname", () => {
    const { mesh } = loadConfig(
      {},
      {
        ...SPLIT,
        SWITCHBOARD_ROLES: "sequencer",
        SWITCHBOARD_SEQUENCER_REPLICAS: "3",
        HOSTNAME: "switchboard-sequencer-2",
      },
    );
    assert.equal(mesh.sequencerOrdinal, 2);
    assert.equal(mesh.instanceId, "switchboard-sequencer-2");
  });

  it("refuses a process that cannot work, naming the setting", () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ SWITCHBOARD_ROLES: "gateway,router" }, /SWITCHBOARD_ROLES must be one of/],
      [{ SWITCHBOARD_ROLES: "gateway" }, /SWITCHBOARD_TOKEN_KEY is required/],
      [{ SWITCHBOARD_ROLES: "sequencer", SWITCHBOARD_TOKEN_KEY: KEY }, /need SWITCHBOARD_BUS=nats/],
      [
        { ...SPLIT, SWITCHBOARD_ROLES: "gateway" },
        /gateway role calls the accounts service: set SWITCHBOARD_ACCOUNTS_URL/,
      ],
      [
        {
          ...SPLIT,
          SWITCHBOARD_ROLES: "fanout",
          SWITCHBOARD_ACCOUNTS_URL: "http://a:1",
          SWITCHBOARD_PRESENCE_URL: "http://p:1",
        },
        /fanout role calls the notification service/,
      ],
      [
        {
          ...SPLIT,
          SWITCHBOARD_ROLES: "sequencer",
          SWITCHBOARD_SEQUENCER_REPLICAS: "2",
          SWITCHBOARD_SEQUENCER_ORDINAL: "2",
        },
        /ordinal 2 is outside 0..1/,
      ],
      [
        {
          ...SPLIT,
          SWITCHBOARD_ROLES: "notification",
          SWITCHBOARD_ACCOUNTS_URL: "http://a:1",
          SWITCHBOARD_SEQUENCER_REPLICAS: "2",
          SWITCHBOARD_SEQUENCER_URLS: "http://s0:1",
        },
        /lists 1 replicas but SWITCHBOARD_SEQUENCER_REPLICAS is 2/,
      ],
      [{ SWITCHBOARD_BUS: "nats" }, /SWITCHBOARD_BUS=nats needs SWITCHBOARD_NATS_URL/],
      [{ SWITCHBOARD_BUS: "kafka" }, /SWITCHBOARD_BUS must be one of memory, nats/],
      [{ SWITCHBOARD_ROUTES: "redis" }, /needs SWITCHBOARD_REDIS_URL/],
      [{ SWITCHBOARD_ACCOUNTS_URL: "accounts:7420" }, /SWITCHBOARD_ACCOUNTS_URL must be an http\(s\) URL/],
      [{ SWITCHBOARD_INSTANCE_ID: "gw 1" }, /SWITCHBOARD_INSTANCE_ID must be/],
      [{ SWITCHBOARD_SEQUENCER_REPLICAS: "2" }, /only sequencer replica/],
      [{ SWITCHBOARD_SEQUENCER_URL_TEMPLATE: "http://seq" }, /must contain \{ordinal\}/],
      [
        { SWITCHBOARD_SHARD_LEASE_MS: "1000" },
        /SWITCHBOARD_SHARD_LEASE_MS must be 0 \(no failover\) or from 3000/,
      ],
      [
        { SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE: "0" },
        /SWITCHBOARD_PUSH_PER_DEVICE_PER_MINUTE must be at least 1/,
      ],
      [{ SWITCHBOARD_PUSH_PER_DEVICE_BURST: "0" }, /SWITCHBOARD_PUSH_PER_DEVICE_BURST must be at least 1/],
    ];
    for (const [env, message] of cases) {
      assert.throws(() => loadConfig({}, env), message, JSON.stringify(env));
    }
  });
});

describe("settings files", () => {
  it("reads setting names to values and refuses anything else, naming the key", async () => {
    const dir = await mkdtemp(join(tmpdir(), "settings-"));
    try {
      const file = join(dir, "switchboard.json");
      await writeFile(
        file,
        JSON.stringify({
          SWITCHBOARD_PORT: 9000,
          SWITCHBOARD_MIGRATE: true,
          SWITCHBOARD_NATS_URL: ["nats://a", "nats://b"],
        }),
      );
      assert.deepEqual(await readSettingsFile(file), {
        SWITCHBOARD_PORT: "9000",
        SWITCHBOARD_MIGRATE: "true",
        SWITCHBOARD_NATS_URL: "nats://a,nats://b",
      });
      await writeFile(file, JSON.stringify({ SWITCHBOARD_PORT: 1, port: 2 }));
      await assert.rejects(readSettingsFile(file), /"port" is not a setting name/);
      await writeFile(file, JSON.stringify({ SWITCHBOARD_LIMITS: { a: 1 } }));
      await assert.rejects(readSettingsFile(file), /"SWITCHBOARD_LIMITS" must be a string/);
      await writeFile(file, "{ not json");
      await assert.rejects(readSettingsFile(file), /switchboard.json: /);
      await writeFile(file, "[]");
      await assert.rejects(readSettingsFile(file), /expected a JSON object/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("page and queue bounds", () => {
  it("keeps pages under a grpc-js client's 4 MiB and able to hold the largest entry", () => {
    const limits = loadConfig({}, {}).limits;
    assert.equal(limits.maxPageBytes, 1024 * 1024);
    assert.equal(limits.outboundQueueBytes, 4 * 1024 * 1024);
    assert.equal(loadConfig({}, { SWITCHBOARD_MAX_PAGE_BYTES: "2097152" }).limits.maxPageBytes, 2097152);
    assert.throws(() => loadConfig({}, { SWITCHBOARD_MAX_PAGE_BYTES: String(4 * 1024 * 1024) }), /at most/);
    assert.throws(() => loadConfig({}, { SWITCHBOARD_MAX_PAGE_BYTES: "65536" }), /at least/);
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_OUTBOUND_QUEUE_BYTES: "524288" }),
      /outboundQueueBytes must be at least maxPageBytes/,
    );
  });
});

describe("registration mode", () => {
  it("is open by default, invite when asked, and refuses anything else naming the setting", () => {
    assert.equal(loadConfig({}, {}).accountLimits.registration, "open");
    assert.equal(loadConfig({}, { SWITCHBOARD_REGISTRATION: "invite" }).accountLimits.registration, "invite");
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_REGISTRATION: "closed" }),
      /SWITCHBOARD_REGISTRATION must be one of open, invite, got "closed"/,
    );
  });
});

describe("configuration errors", () => {
  it("are ConfigurationErrors, start-up failures with no wire code, whichever section refuses", () => {
    const bad: Array<Record<string, string>> = [
      { SWITCHBOARD_PORT: "x" },
      { SWITCHBOARD_MEDIA_MAX_BYTES: "0" },
      { SWITCHBOARD_STORE: "scylla" },
      { SWITCHBOARD_PRIVACY_GROUP_ADD_DEFAULT: "friends" },
    ];
    for (const env of bad) {
      assert.throws(
        () => loadConfig({}, env),
        (err: unknown) => err instanceof ConfigurationError && !("code" in err),
        JSON.stringify(env),
      );
    }
  });

  it("reads SCYLLA_* only for a process that opens the store on ScyllaDB", () => {
    const scylla = { SWITCHBOARD_STORE: "scylla", SCYLLA_CONTACT_POINTS: "db-1,db-2:9043" };
    assert.deepEqual(loadConfig({}, scylla).scylla, {
      contactPoints: ["db-1", "db-2:9043"],
      localDataCenter: "datacenter1",
      keyspace: "switchboard",
      // The retention (30 days by default) is the entries' TTL on ScyllaDB.
      entryTtlSeconds: 2_592_000,
    });
    // The smaller of the two wins; 0 retention leaves SCYLLA_ENTRY_TTL_SECONDS alone.
    const both = { ...scylla, SCYLLA_ENTRY_TTL_SECONDS: "86400", SWITCHBOARD_RETENTION_SECONDS: "604800" };
    assert.equal(loadConfig({}, both).scylla?.entryTtlSeconds, 86_400);
    const keep = { ...scylla, SWITCHBOARD_RETENTION_SECONDS: "0" };
    assert.equal(loadConfig({}, keep).scylla?.entryTtlSeconds, undefined);
    assert.equal(loadConfig({}, {}).scylla, undefined);
    const gateway = {
      SWITCHBOARD_STORE: "scylla",
      SWITCHBOARD_ROLES: "presence",
      SWITCHBOARD_TOKEN_KEY: KEY,
      SWITCHBOARD_NATS_URL: "nats://127.0.0.1:4222",
    };
    assert.equal(loadConfig({}, gateway).scylla, undefined);
  });

  it("sizes the sequencer's hot state by its store unless it is set", () => {
    const MiB = 1024 * 1024;
    assert.equal(loadConfig({}, {}).sequencerCacheBytes, 16 * MiB);
    const scylla = { SWITCHBOARD_STORE: "scylla", SCYLLA_CONTACT_POINTS: "db-1" };
    assert.equal(loadConfig({}, scylla).sequencerCacheBytes, 128 * MiB);
    assert.equal(loadConfig({}, { SWITCHBOARD_SEQUENCER_CACHE_BYTES: "1000" }).sequencerCacheBytes, 1000);
    assert.equal(
      loadConfig({}, { ...scylla, SWITCHBOARD_SEQUENCER_CACHE_BYTES: "0" }).sequencerCacheBytes,
      0,
      "0 keeps nothing idle, on either store",
    );
    assert.equal(
      loadConfig({ sequencerCacheBytes: 5 }, { SWITCHBOARD_SEQUENCER_CACHE_BYTES: "x" }).sequencerCacheBytes,
      5,
    );
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_SEQUENCER_CACHE_BYTES: "-1" }),
      /SWITCHBOARD_SEQUENCER_CACHE_BYTES/,
    );
  });

  it("reads the stream port: unset by default, a port or 0, never the main port", () => {
    assert.equal(loadConfig({}, {}).streamPort, undefined);
    assert.equal(loadConfig({}, { SWITCHBOARD_STREAM_PORT: "7430" }).streamPort, 7430);
    assert.equal(loadConfig({}, { SWITCHBOARD_STREAM_PORT: "0", SWITCHBOARD_PORT: "0" }).streamPort, 0);
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_STREAM_PORT: "7420" }),
      /SWITCHBOARD_STREAM_PORT must differ from SWITCHBOARD_PORT/,
    );
    assert.throws(() => loadConfig({}, { SWITCHBOARD_STREAM_PORT: "70000" }), /at most 65535/);
    assert.throws(() => loadConfig({}, { SWITCHBOARD_STREAM_PORT: "x" }), /SWITCHBOARD_STREAM_PORT/);
  });

  it("reads the stream port's URL for clients: only with a stream port, an http(s) base URL", () => {
    const port = { SWITCHBOARD_STREAM_PORT: "7430" };
    assert.equal(loadConfig({}, port).streamUrl, undefined);
    const url = "https://chat.example.com:7431";
    assert.equal(loadConfig({}, { ...port, SWITCHBOARD_STREAM_URL: url }).streamUrl, url);
    assert.equal(loadConfig({ streamPort: 0, streamUrl: url }, {}).streamUrl, url);
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_STREAM_URL: url }),
      /SWITCHBOARD_STREAM_URL names the stream port: set SWITCHBOARD_STREAM_PORT too/,
    );
    for (const [value, message] of [
      ["chat.example.com:7431", /SWITCHBOARD_STREAM_URL must be an http\(s\) URL/],
      ["not a url", /SWITCHBOARD_STREAM_URL is not a URL/],
      ["wss://chat.example.com:7431", /SWITCHBOARD_STREAM_URL must be an http\(s\) URL/],
      ["https://user:pw@chat.example.com:7431", /credentials, a query or a fragment/],
      ["https://chat.example.com:7431/?x=1", /credentials, a query or a fragment/],
      ["https://chat.example.com:7431/#x", /credentials, a query or a fragment/],
    ] as const) {
      assert.throws(() => loadConfig({}, { ...port, SWITCHBOARD_STREAM_URL: value }), message, value);
    }
  });

  it("leaves a variable unread when loadConfig's input sets its value", () => {
    assert.equal(loadConfig({ port: 0 }, { SWITCHBOARD_PORT: "not a port" }).port, 0);
    assert.throws(
      () => loadConfig({}, { SWITCHBOARD_PORT: "not a port" }),
      /port must be a non-negative integer/,
    );
  });
});
