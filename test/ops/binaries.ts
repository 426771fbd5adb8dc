/**
 * Real binaries for the ops tests (prometheus, promtool, alertmanager). A missing binary skips its
 * tests with a printed reason, except under CI=true, where the tests run and fail: CI must have them
 * (`apt-get install prometheus prometheus-alertmanager` on Debian/Ubuntu).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

export const IN_CI = process.env.CI === 'true';

/** Absolute path of the first candidate found on PATH, or null. */
export function findBinary(...candidates: string[]): string | null {
  for (const name of candidates) {
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      const full = join(dir, name);
      if (dir !== '' && existsSync(full)) return full;
    }
  }
  return null;
}

/**
 * Whether tests needing `binary` should be skipped. Prints why when skipping. In CI it never skips,
 * so the test itself fails on the missing binary.
 */
export function skipWithoutBinary(label: string, binary: string | null): boolean {
  if (binary !== null) return false;
  if (IN_CI) return false;
  console.warn(
    `[test/ops] skipping ${label}: binary not found on PATH (install prometheus / prometheus-alertmanager)`,
  );
  return true;
}

/** Fails a CI run clearly when the binary is missing (the test ran because skipping is not allowed). */
export function mustHave(binary: string | null, name: string): string {
  if (binary === null) throw new Error(`${name} is required in CI but is not on PATH`);
  return binary;
}

export interface RunResult {
  status: number | null;
  output: string;
}

/**
 * Runs a binary to completion. Asynchronous on purpose: a test worker blocked in spawnSync for a minute
 * (fifteen promtool runs in one file) cannot answer vitest's RPC, and the run fails with
 * "Timeout calling onTaskUpdate" although every test passed.
 */
export function run(binary: string, args: string[], cwd?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(binary, args, { cwd, encoding: 'utf8', timeout: 60_000 }, (error, stdout, stderr) => {
      const status = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
      resolve({ status, output: `${stdout}${stderr}` });
    });
  });
}

/** A free TCP port on 127.0.0.1 (bound and released; good enough for a child that binds right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      if (address === null || typeof address === 'string') return reject(new Error('no port'));
      server.close(() => resolve(address.port));
    });
  });
}

/** A child process whose combined output is kept for failure messages. */
export interface Child {
  process: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

export function startChild(binary: string, args: string[], env?: NodeJS.ProcessEnv, cwd?: string): Child {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env, cwd });
  let output = '';
  child.stdout?.on('data', (b: Buffer) => (output += b.toString('utf8')));
  child.stderr?.on('data', (b: Buffer) => (output += b.toString('utf8')));
  return {
    process: child,
    output: () => output,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        child.once('exit', () => {
          clearTimeout(killer);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}

/**
 * Polls `check` until it returns a value (not undefined) or the deadline passes; gives up at once
 * if the watched child process exits.
 */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 20_000,
  describeFailure: () => string = () => '',
  watched?: Child,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    const exit = watched?.process.exitCode ?? watched?.process.signalCode;
    if (exit !== undefined && exit !== null) {
      throw new Error(`process exited (${exit}) while waiting for ${what}\n${watched!.output()}`);
    }
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(
    `timed out waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ''}\n${describeFailure()}`,
  );
}

export const PROMTOOL = findBinary('promtool');
export const PROMETHEUS = findBinary('prometheus');
export const ALERTMANAGER = findBinary('prometheus-alertmanager', 'alertmanager');

/** Starts the real Alertmanager on a free 127.0.0.1 port (no cluster gossip) and waits until ready. */
export async function startAlertmanager(
  configFile: string,
  storageDir: string,
): Promise<{ url: string; child: Child }> {
  const port = await freePort();
  const child = startChild(mustHave(ALERTMANAGER, 'alertmanager'), [
    `--config.file=${configFile}`,
    `--storage.path=${storageDir}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--cluster.listen-address=', // no gossip port: a single test instance
  ]);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(
      'alertmanager /-/ready',
      async () => ((await fetch(`${url}/-/ready`)).ok ? true : undefined),
      20_000,
      child.output,
      child,
    );
  } catch (error) {
    await child.stop();
    throw error;
  }
  return { url, child };
}
