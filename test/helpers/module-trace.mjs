// `node --import ./test/helpers/module-trace.mjs ...` appends the URL of every module the process
// resolves to the file named by MODULE_TRACE_FILE, one a line: what a command loads, for
// test/release/startup.test.ts. The same file is the hooks module (run on the loader's thread).
import { appendFileSync } from "node:fs";
import { register } from "node:module";
import { isMainThread } from "node:worker_threads";

if (isMainThread) register(import.meta.url);

export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  const file = process.env.MODULE_TRACE_FILE;
  if (file) appendFileSync(file, `${resolved.url}\n`);
  return resolved;
}
