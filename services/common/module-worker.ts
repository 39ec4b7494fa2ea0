import { Worker, type WorkerOptions } from "node:worker_threads";

/**
 * The URL of a module beside `base` (an `import.meta.url`), with base's extension: `.js` in the
 * compiled build (dist/), `.ts` when the sources run through tsx.
 */
export function siblingModule(base: string, name: string): URL {
  return new URL(`./${name}${base.endsWith(".ts") ? ".ts" : ".js"}`, base);
}

// Worker threads do not inherit tsx's loader hooks; for a TypeScript module a small bootstrap
// registers them first, as bin/switchboard.js does, then imports it.
const TSX_BOOTSTRAP = `
const { workerData } = require("node:worker_threads");
import(workerData.tsxApi)
  .then(({ register }) => { register(); return import(workerData.moduleUrl); })
  .catch((err) => { console.error(err); process.exit(1); });
`;

/**
 * Starts a worker thread running the module at `url`, compiled or from the sources. For a `.ts`
 * module, `workerData` (an object) gains the bootstrap's `tsxApi` and `moduleUrl` besides its own
 * fields.
 */
export function moduleWorker(url: URL, options: WorkerOptions & { workerData?: object } = {}): Worker {
  if (!url.pathname.endsWith(".ts")) return new Worker(url, options);
  return new Worker(TSX_BOOTSTRAP, {
    ...options,
    eval: true,
    workerData: { ...options.workerData, tsxApi: import.meta.resolve("tsx/esm/api"), moduleUrl: url.href },
  });
}
