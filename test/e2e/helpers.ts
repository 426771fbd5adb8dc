/**
 * End-to-end harness: the fake gateway plus the real `tokenmeter` CLI as a child process
 * (`node --import tsx src/cli/main.ts …`, as users run it) with a real config file, price file and
 * SQLite audit log in a temp dir. Rows are read from the DB file read-only, polling (bounded) until
 * the audit queue has flushed the expected number. Same spawn recipe as
 * test/proxy/serve-cli.test.ts. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import type { RequestRecord } from '../../src/record.js';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';

export const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');
// Resolved here because the child runs in a temp dir (so no stray ./tokenmeter.yaml is picked up).
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/** A DB row: the record's fields, with SQLite's integer booleans. */
export type Row = Omit<RequestRecord, 'stream'> & { stream: number };

export interface TempDir {
  dir: string;
  remove: () => void;
}

export function makeTempDir(prefix: string): TempDir {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The environment without any TOKENMETER_* / OTEL_* of the developer's shell (so the test decides),
 * plus `extra`; OTel disabled unless `extra` sets some OTEL_*.
 */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_')) env[k] = v;
  if (!Object.keys(extra).some((k) => k.startsWith('OTEL_'))) env.OTEL_SDK_DISABLED = 'true';
  return { ...env, ...extra };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one tokenmeter subcommand to completion (killed after `timeoutMs`). */
export async function runCli(args: string[], opts: { cwd: string; timeoutMs?: number }): Promise<CliResult> {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], {
    cwd: opts.cwd,
    env: childEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
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

/**
 * Starts `tokenmeter serve --port 0 <args>` in `opts.cwd` (with `opts.env` on top of
 * {@link childEnv}) and waits for its listening line.
 */
export async function startServe(
  args: string[],
  opts: { cwd: string; env?: Record<string, string>; startTimeoutMs?: number },
): Promise<ServeProcess> {
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;
  const child = spawn(process.execPath, ['--import', TSX, MAIN, 'serve', '--port', '0', ...args], {
    cwd: opts.cwd,
    env: childEnv(opts.env),
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

/** `tokenmeter serve --config <dir>/<name>` after writing `yaml` there. */
export async function serveConfig(
  dir: string,
  yaml: string,
  name = 'tokenmeter.yaml',
): Promise<ServeProcess> {
  return startServe(['--config', writeFile(dir, name, yaml)], { cwd: dir });
}

/** What records, costs and burst share: the fake gateway, a temp dir with `files` written, its audit.db. */
export interface E2eWorld {
  gateway: FakeGateway;
  tmp: TempDir;
  dbPath: string;
}

export async function startWorld(prefix: string, files: Record<string, string>): Promise<E2eWorld> {
  const gateway = await startFakeGateway();
  const tmp = makeTempDir(prefix);
  for (const [name, text] of Object.entries(files)) writeFile(tmp.dir, name, text);
  return { gateway, tmp, dbPath: join(tmp.dir, 'audit.db') };
}

/** Closes the gateway and removes the temp dir (either may be missing after a failed beforeAll). */
export async function closeWorld(world: Partial<E2eWorld> | undefined): Promise<void> {
  await world?.gateway?.close();
  world?.tmp?.remove();
}

export function writeFile(dir: string, name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** All rows of `requests`, oldest first, from a read-only connection. */
export function readRows(dbPath: string): Row[] {
  if (!existsSync(dbPath)) return [];
  const db = openSqlite(dbPath, { readonly: true, fileMustExist: true });
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

/** One sample of a Prometheus text exposition: value of `name{labels}` where every given label matches. */
export function samples(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const parsed: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      parsed[l[1]!] = l[2]!;
    if (Object.entries(labels).every(([k, v]) => parsed[k] === v))
      out.push({ labels: parsed, value: Number(m[3]) });
  }
  return out;
}

/** Polls `probe` every 20 ms until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
