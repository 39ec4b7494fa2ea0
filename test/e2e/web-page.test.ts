import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { type Browser, chromium, type Page } from "playwright-core";
import { type PageServer, servePage } from "../../examples/web/serve.js";
import { uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

/** Debian's chromium (apt-get install chromium); playwright-core downloads no browser of its own. */
const CHROMIUM = "/usr/bin/chromium";
const missing = existsSync(CHROMIUM)
  ? undefined
  : `${CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)`;
// Locally the suite skips and says why; in CI a missing browser is a failure, not a skip.
if (missing !== undefined && process.env.CI === "true") throw new Error(missing);

/**
 * The web example (examples/web/) in headless Chromium against a real server process: two
 * browser profiles, two users, one using Connect and the other gRPC-Web, exchange messages over
 * the page's Subscribe stream and unary calls, cross-origin with CORS; one reloads and resumes
 * from its acks without losing or repeating anything.
 */
describe("web example in headless Chromium", { skip: missing }, () => {
  let page: PageServer;
  let server: ServerProcess;
  let browser: Browser;

  before(async () => {
    page = await servePage(0);
    server = await startServerProcess({ env: { SWITCHBOARD_CORS_ORIGINS: page.origin } });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // Root in a container has no user namespaces for Chromium's sandbox.
      args: ["--no-sandbox"],
    });
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    await page?.close();
  });

  const url = (protocol: string) =>
    `${page.origin}/?server=${encodeURIComponent(server.url)}&protocol=${protocol}`;

  /** The texts of the open chat's messages, in the order the page shows them. */
  const lines = (p: Page) => p.locator("#log li").allTextContents();

  async function waitForLines(p: Page, what: string, done: (texts: string[]) => boolean): Promise<string[]> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const texts = await lines(p);
      if (done(texts)) return texts;
      if (Date.now() > deadline) {
        const status = await p.locator("#status").textContent();
        throw new Error(`timed out waiting for ${what}; shown: ${JSON.stringify(texts)}; status: ${status}`);
      }
      await p.waitForTimeout(50);
    }
  }

  async function register(p: Page, protocol: string, username: string): Promise<void> {
    const errors: string[] = [];
    p.on("pageerror", (err) => errors.push(err.message));
    await p.goto(url(protocol));
    await p.fill("#username", username);
    await p.click("#register");
    await p.locator("#status", { hasText: "up to date" }).waitFor({ timeout: 15_000 });
    assert.deepEqual(errors, []);
  }

  it("two users exchange messages; one reloads and resumes without loss or repeats", async () => {
    const aliceName = uniqueName("alice");
    const bobName = uniqueName("bob");
    const alice = await (await browser.newContext()).newPage();
    const bobContext = await browser.newContext();
    const bob = await bobContext.newPage();
    await register(alice, "connect", aliceName);
    await register(bob, "grpc-web", bobName);

    await alice.fill("#peer", bobName);
    await alice.click("#open");
    await alice.locator("#title", { hasText: `chat with ${bobName}` }).waitFor({ timeout: 15_000 });
    await alice.fill("#text", "hello bob");
    await alice.press("#text", "Enter");
    // Bob's page opens the conversation when its first message arrives.
    await waitForLines(bob, "alice's message at bob", (t) => t.includes(`${aliceName}: hello bob`));
    await bob.fill("#text", "hi alice");
    await alice.locator("#typing", { hasText: `${bobName} is typing` }).waitFor({ timeout: 15_000 });
    await bob.press("#text", "Enter");
    await waitForLines(alice, "bob's reply at alice", (t) => t.includes(`${bobName}: hi alice`));
    // Bob's page acked (and read) what it showed: alice sees it.
    await waitForLines(alice, "the read receipt", (t) => t.includes(`${aliceName}: hello bob ✓✓ read`));

    // Bob leaves once his acks are answered; alice writes meanwhile; bob comes back.
    await bob.evaluate(() =>
      (
        globalThis as unknown as { switchboardExample: { settled(): Promise<void> } }
      ).switchboardExample.settled(),
    );
    await bob.goto("about:blank");
    for (const text of ["while you were away 1", "while you were away 2"]) {
      await alice.fill("#text", text);
      await alice.press("#text", "Enter");
    }
    await waitForLines(alice, "alice's own sends", (t) =>
      t.some((l) => l.startsWith(`${aliceName}: while you were away 2`)),
    );
    await bob.goto(url("grpc-web"));
    // The chat reopens from its history; the stream's backlog has come once it says caught up.
    await bob.locator("#status", { hasText: "up to date" }).waitFor({ timeout: 15_000 });
    const shown = await waitForLines(bob, "the messages sent while bob was away", (t) =>
      t.includes(`${aliceName}: while you were away 2`),
    );
    assert.deepEqual(
      shown.map((l) => l.replace(/ ✓.*$/, "")),
      [
        `${aliceName}: hello bob`,
        `${bobName}: hi alice`,
        `${aliceName}: while you were away 1`,
        `${aliceName}: while you were away 2`,
      ],
      "every message once, in order",
    );
    // On the wire: the stream after the reload brought only what bob had not acked, once each.
    const received = await bob.evaluate(
      () =>
        (globalThis as unknown as { switchboardExample: { received: string[] } }).switchboardExample.received,
    );
    assert.equal(received.length, 2, `entries the resumed stream delivered: ${JSON.stringify(received)}`);
    assert.equal(new Set(received).size, 2);

    // A plain reload: the chat reopens from its history, and the stream brings nothing again.
    await bob.evaluate(() =>
      (
        globalThis as unknown as { switchboardExample: { settled(): Promise<void> } }
      ).switchboardExample.settled(),
    );
    await bob.reload();
    await bob.locator("#status", { hasText: "up to date" }).waitFor({ timeout: 15_000 });
    const again = await waitForLines(bob, "the chat after a reload", (t) => t.length === 4);
    assert.deepEqual(
      again.map((l) => l.replace(/ ✓.*$/, "")),
      shown.map((l) => l.replace(/ ✓.*$/, "")),
    );
    const redelivered = await bob.evaluate(
      () =>
        (globalThis as unknown as { switchboardExample: { received: string[] } }).switchboardExample.received,
    );
    assert.deepEqual(redelivered, [], "nothing acked comes again");
  });
});
