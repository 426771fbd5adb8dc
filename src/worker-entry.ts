import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { WorkerOptions } from 'node:worker_threads';

/**
 * How to start the worker whose compiled entry is `js` (a `.js` URL; its `.ts` twin beside it is
 * used from the sources): the file itself from dist/, else an eval'd entry that registers tsx
 * first: a worker does not inherit the parent's loader hooks (nor honour `--import` in its execArgv
 * on Node 20). Used by every worker thread: the audit writer, the console's reader, span export.
 */
export function workerEntry(js: URL): { filename: string | URL; options: WorkerOptions } {
  // No flags from the process: a worker refuses V8 and process-wide ones (`--expose-gc`) and
  // `node -e`'s `--input-type`, and the threads need none (tsx is registered below when needed).
  const execArgv: string[] = [];
  if (existsSync(fileURLToPath(js))) return { filename: js, options: { execArgv } };
  const ts = new URL(js.href.replace(/\.js$/, '.ts')).href;
  const tsxRoot = dirname(createRequire(import.meta.url).resolve('tsx/package.json'));
  const api = pathToFileURL(join(tsxRoot, 'dist/esm/api/index.mjs')).href;
  const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(ts)}); });`;
  return { filename: code, options: { eval: true, execArgv } };
}
