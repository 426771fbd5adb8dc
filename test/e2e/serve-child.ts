/**
 * Runs the real `tokenmeter` CLI as a child process (`node --import tsx src/cli/main.ts …`), as
 * users run it, for the telemetry and budget end-to-end tests. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');
// Resolved here because the child runs in a temp dir (so no ./tokenmeter.yaml is picked up).
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/** The parent's env without any TOKENMETER_* / OTEL_* setting (so the test decides), plus `extra`. */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_')) env[k] = v;
  if (!Object.keys(extra).some((k) => k.startsWith('OTEL_'))) env.OTEL_SDK_DISABLED = 'true';
  return { ...env, ...extra };
}

export interface ServeChild {
  child: ChildProcess;
  base: string;
  port: number;
  stderr(): string;
  exited: Promise<number | null>;
  /** SIGTERM and wait for the exit code (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | null>;
}

export async function startServe(
  args: string[],
  opts: { cwd: string; env?: Record<string, string>; startTimeoutMs?: number },
): Promise<ServeChild> {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, 'serve', '--port', '0', ...args], {
    cwd: opts.cwd,
    env: childEnv(opts.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  child.stdout!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const timeoutMs = opts.startTimeoutMs ?? 30_000;
  const port = await new Promise<number>((resolvePort, reject) => {
    const started = Date.now();
    const t = setInterval(() => {
      const m = /"msg":"listening".*?"port":(\d+)/.exec(err);
      if (m) {
        clearInterval(t);
        resolvePort(Number(m[1]));
      } else if (Date.now() - started > timeoutMs) {
        clearInterval(t);
        child.kill('SIGKILL');
        reject(new Error(`serve did not listen within ${timeoutMs} ms: ${err}`));
      }
    }, 20);
    void exited.then((code) => {
      clearInterval(t);
      reject(new Error(`serve exited ${code}: ${err}`));
    });
  });
  return {
    child,
    port,
    base: `http://127.0.0.1:${port}`,
    stderr: () => err,
    exited,
    async stop(stopTimeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Runs a one-shot CLI command to completion (killed after `timeoutMs`). */
export async function runCli(
  args: string[],
  opts: { cwd: string; timeoutMs?: number },
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], {
    cwd: opts.cwd,
    env: childEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  clearTimeout(timer);
  return { code, stdout, stderr };
}

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
