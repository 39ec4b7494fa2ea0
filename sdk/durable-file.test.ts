import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { removeFiles, removeLeftovers, writeFilesAtomic } from "./durable-file.js";

// writeFileAtomic is tested in profile.test.ts (including a reader racing a rewrite); these cover
// the batch writes the file engine uses and the clean-up of interrupted writes (SerialWrite is in
// sdk/storage/storage.test.ts).

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "sb-durable-"));
  dirs.push(dir);
  return dir;
}
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe("durable files", () => {
  it("writes and removes a batch of files, leaving no temporary file", async () => {
    const dir = await tempDir();
    await writeFilesAtomic(dir, [
      ["a", "one"],
      ["b", new Uint8Array([1, 2, 3])],
    ]);
    await writeFilesAtomic(dir, [["a", "two"]]);
    assert.deepEqual((await readdir(dir)).sort(), ["a", "b"]);
    assert.equal(await readFile(join(dir, "a"), "utf8"), "two");
    assert.deepEqual([...(await readFile(join(dir, "b")))], [1, 2, 3]);
    await removeFiles(dir, ["a", "missing"]);
    assert.deepEqual(await readdir(dir), ["b"]);
  });

  it("removes the leftovers of interrupted writes and nothing else", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "state.json"), "{}");
    await writeFile(join(dir, "state.json.tmp-4242-deadbeef"), "{half");
    await removeLeftovers(dir);
    assert.deepEqual(await readdir(dir), ["state.json"]);
  });
});
