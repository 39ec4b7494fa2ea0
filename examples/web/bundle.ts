import { join } from "node:path";
import { build } from "esbuild";

/**
 * The page's script: app.ts and what it imports (connect-web, protobuf-es and the generated code
 * under gen/) bundled by esbuild into one ES module for the browser, in memory.
 */
export async function bundleApp(): Promise<string> {
  const result = await build({
    entryPoints: [join(import.meta.dirname, "app.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    sourcemap: "inline",
    write: false,
    logLevel: "silent",
  });
  const [file] = result.outputFiles;
  if (file === undefined) throw new Error("esbuild produced no output");
  return file.text;
}
