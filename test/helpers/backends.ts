import { spawnSync } from "node:child_process";
import type { Redis } from "ioredis";
import { pingNats, pingRedis } from "../../services/mesh/servers.js";

/** A redis-server a test owns. */
export type { BackendServer as RedisServer } from "../../services/mesh/servers.js";
// The processes themselves are started by the same code `switchboard mesh` uses.
export {
  type BackendServer,
  freePort,
  type NatsServer,
  pingNats,
  pingRedis,
  startNatsServer,
  startRedisServer,
} from "../../services/mesh/servers.js";

/** The Redis the tests share: 127.0.0.1:6379 unless SWITCHBOARD_TEST_REDIS_URL says otherwise. */
export function testRedisUrl(): string {
  return process.env.SWITCHBOARD_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
}

/** What a test needs to skip itself; node:test's TestContext fits. */
export interface Skippable {
  skip(message?: string): void;
}

/**
 * Returns the Redis URL when Redis answers. Otherwise the test is skipped with a message, except
 * under CI=true, where a missing backend must not pass silently: the test fails instead.
 */
export async function requireRedis(t: Skippable, url: string = testRedisUrl()): Promise<string | undefined> {
  if (await pingRedis(url)) return url;
  if (process.env.CI === "true") {
    throw new Error(
      `redis-server not reachable at ${url}, and CI=true requires it: install the Debian package ` +
        "redis-server (apt-get install redis-server) and start it, or point SWITCHBOARD_TEST_REDIS_URL at one",
    );
  }
  t.skip(
    `redis-server not reachable at ${url}; install it (apt-get install redis-server) to run these tests`,
  );
  return undefined;
}

/** The NATS the tests share: 127.0.0.1:4222 unless SWITCHBOARD_TEST_NATS_URL says otherwise. */
export function testNatsUrl(): string {
  return process.env.SWITCHBOARD_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
}

/**
 * Returns the NATS URL when NATS answers. Otherwise the test is skipped with a message, except
 * under CI=true, where a missing backend must not pass silently: the test fails instead.
 */
export async function requireNats(t: Skippable, url: string = testNatsUrl()): Promise<string | undefined> {
  if (await pingNats(url)) return url;
  if (process.env.CI === "true") {
    throw new Error(
      `nats-server not reachable at ${url}, and CI=true requires it: install the Debian package ` +
        "nats-server (apt-get install nats-server) and start it with JetStream (-js), or point " +
        "SWITCHBOARD_TEST_NATS_URL at one",
    );
  }
  t.skip(
    `nats-server not reachable at ${url}; install the Debian package nats-server (apt-get install nats-server) ` +
      "and start it with -js to run these tests",
  );
  return undefined;
}

/**
 * The binaries a multi-process mesh spawns that are absent here, each with its Debian package,
 * and the skip reason for node:test: a reason locally, never under CI=true (the suite's before()
 * hook then fails, naming what to install).
 */
export function meshPrerequisites(): { missing: string[]; skip: string | false } {
  const wanted = [
    ["nats-server", "--version", "nats-server"],
    ["redis-server", "--version", "redis-server"],
  ] as const;
  const missing = wanted
    .filter(([binary, flag]) => spawnSync(binary, [flag], { stdio: "ignore" }).error !== undefined)
    .map(([binary, , pkg]) => `${binary} (Debian package ${pkg})`);
  const skip =
    missing.length > 0 && process.env.CI !== "true"
      ? `needs ${missing.join(" and ")}: apt-get install nats-server redis-server`
      : false;
  return { missing, skip };
}

/** Every key under a prefix (SCAN, so a shared Redis is never blocked). */
export async function keysWith(client: Redis, prefix: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = "0";
  do {
    const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
    cursor = next;
    found.push(...keys);
  } while (cursor !== "0");
  return found;
}

/** Deletes a test run's keys from a shared Redis and closes the run's clients. */
export async function cleanUpRedis(shared: Redis, prefix: string, clients: readonly Redis[]): Promise<void> {
  const keys = await keysWith(shared, prefix);
  for (let i = 0; i < keys.length; i += 500) await shared.del(...keys.slice(i, i + 500));
  await Promise.all(
    clients.map((c) => (c.status === "end" ? undefined : c.quit().catch(() => c.disconnect()))),
  );
}
