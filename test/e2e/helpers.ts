/**
 * End-to-end harness: the fake gateway plus `tokenmeter serve` as a real child process
 * (`node --import tsx src/cli/main.ts serve`) with a real config file, price file and SQLite audit
 * log in a temp dir. Rows are read from the DB file read-only, polling (bounded) until the audit
 * queue has flushed the expected number. Same spawn recipe as test/proxy/serve-cli.test.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import type { RequestRecord } from '../../src/record.js';

export const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');
// Resolved here because the child runs in a temp dir (so no stray ./tokenmeter.yaml is picked up).
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/** A DB row: the record's fields, with SQLite's integer booleans. */
export type Row = Omit<RequestRecord, 'stream'> & { stream: number };

export function makeTempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The environment without any TOKENMETER_* / OTEL_* of the developer's shell; OTel disabled. */
export function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_')) env[k] = v;
  env.OTEL_SDK_DISABLED = 'true';
  return env;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one tokenmeter subcommand to completion (bounded by `timeoutMs`). */
export async function runCli(args: string[], cwd: string, timeoutMs = 30_000): Promise<CliResult> {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], {
    cwd,
    env: cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Every serve child still running, killed if the test worker exits first (a failed beforeAll). */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

export interface ServeProcess {
  child: ChildProcess;
  /** http://127.0.0.1:PORT */
  base: string;
  port: number;
  stderr(): string;
  exited: Promise<number | null>;
  /** SIGTERM and wait for the exit code (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | null>;
}

/** Starts `tokenmeter serve --config <file> --port 0` in `cwd` and waits for its listening line. */
export async function startServe(
  cwd: string,
  args: string[],
  startTimeoutMs = 30_000,
): Promise<ServeProcess> {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, 'serve', '--port', '0', ...args], {
    cwd,
    env: cleanEnv(),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  liveChildren.add(child);
  const exited = new Promise<number | null>((r) =>
    child.on('exit', (code) => {
      liveChildren.delete(child);
      r(code);
    }),
  );
  const port = await new Promise<number>((resolvePort, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      const m = /"msg":"listening".*?"port":(\d+)/.exec(err);
      if (m) {
        clearInterval(timer);
        resolvePort(Number(m[1]));
      } else if (Date.now() - started > startTimeoutMs) {
        clearInterval(timer);
        child.kill('SIGKILL');
        reject(new Error(`serve did not start in ${startTimeoutMs} ms: ${err}`));
      }
    }, 20);
    void exited.then((code) => {
      clearInterval(timer);
      reject(new Error(`serve exited ${code}: ${err}`));
    });
  });
  return {
    child,
    base: `http://127.0.0.1:${port}`,
    port,
    stderr: () => err,
    exited,
    stop: async (timeoutMs = 20_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export function writeFile(dir: string, name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** All rows of `requests`, oldest first, from a read-only connection. */
export function readRows(dbPath: string): Row[] {
  if (!existsSync(dbPath)) return [];
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT * FROM requests ORDER BY ts_start, id').all() as Row[];
  } finally {
    db.close();
  }
}

/** Polls until at least `count` rows exist (bounded), then returns them all. */
export async function waitForRows(dbPath: string, count: number, timeoutMs = 15_000): Promise<Row[]> {
  const started = Date.now();
  let rows: Row[] = [];
  while (Date.now() - started < timeoutMs) {
    try {
      rows = readRows(dbPath);
    } catch {
      // The writer may be mid-migration on the very first poll; try again.
      rows = [];
    }
    if (rows.length >= count) return rows;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`expected ${count} rows in ${dbPath}, found ${rows.length} after ${timeoutMs} ms`);
}

/** The row whose upstream_request_id is `req-<n>` of the fake gateway. */
export function rowByRequestId(rows: Row[], requestId: string): Row {
  const matches = rows.filter((r) => r.upstream_request_id === requestId);
  if (matches.length !== 1) throw new Error(`${matches.length} rows with upstream_request_id ${requestId}`);
  return matches[0]!;
}

/** `undefined` (not stated on the wire) is NULL in the DB. */
export const orNull = <T>(v: T | undefined): T | null => (v === undefined ? null : v);
