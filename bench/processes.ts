/**
 * The benchmark's child processes (docs/benchmarks.md): each server runs in its own process, as a
 * user has them, and the bench process only generates load. A child announces its port either as
 * `{"port":N}` on stdout (bench scripts) or as tokenmeter's JSON `listening` log line on stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

export interface Child {
  name: string;
  pid: number;
  port: number;
  base: string;
  /** Last lines the child wrote on stderr (for failure reports). */
  stderrTail(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code (or signal name). */
  stop(graceMs?: number): Promise<string>;
}

export interface SpawnSpec {
  name: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Where the port is announced. */
  portFrom: 'stdout' | 'stderr-listening';
  startTimeoutMs?: number;
}

const TAIL_LINES = 20;

/** The port from one line: `{"port":N}` or a JSON log line with msg "listening" and a port. */
function portFromLine(line: string, from: SpawnSpec['portFrom']): number | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const j = JSON.parse(line) as { port?: unknown; msg?: unknown };
    if (from === 'stderr-listening' && j.msg !== 'listening') return undefined;
    return typeof j.port === 'number' ? j.port : undefined;
  } catch {
    return undefined;
  }
}

function exitOf(proc: ChildProcess): Promise<string> {
  if (proc.exitCode !== null || proc.signalCode !== null)
    return Promise.resolve(String(proc.exitCode ?? proc.signalCode));
  return new Promise((r) => proc.once('exit', (code, sig) => r(String(code ?? sig))));
}

export function spawnChild(spec: SpawnSpec): Promise<Child> {
  const proc = spawn(process.execPath, spec.args, {
    env: spec.env ?? process.env,
    cwd: spec.cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail: string[] = [];
  const exited = exitOf(proc);
  return new Promise<Child>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(
        new Error(`${spec.name}: no port within ${spec.startTimeoutMs ?? 20_000} ms: ${tail.join(' | ')}`),
      );
    }, spec.startTimeoutMs ?? 20_000);
    const onLine = (stream: 'stdout' | 'stderr') => (line: string) => {
      if (stream === 'stderr') {
        tail.push(line);
        if (tail.length > TAIL_LINES) tail.shift();
      }
      const wanted = spec.portFrom === 'stdout' ? 'stdout' : 'stderr';
      const port = stream === wanted ? portFromLine(line, spec.portFrom) : undefined;
      if (port === undefined) return;
      clearTimeout(timer);
      resolve({
        name: spec.name,
        pid: proc.pid!,
        port,
        base: `http://127.0.0.1:${port}`,
        stderrTail: () => tail.join('\n'),
        stop: async (graceMs = 10_000) => {
          if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
          const kill = setTimeout(() => proc.kill('SIGKILL'), graceMs);
          const code = await exited;
          clearTimeout(kill);
          return code;
        },
      });
    };
    createInterface({ input: proc.stdout! }).on('line', onLine('stdout'));
    createInterface({ input: proc.stderr! }).on('line', onLine('stderr'));
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${spec.name} exited (${code}) before listening: ${tail.join(' | ')}`));
    });
  });
}

/** The user's environment without TOKENMETER_* and OTEL_* settings, plus `extra`: serve runs on its defaults. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(TOKENMETER_|OTEL_)/.test(k)) env[k] = v;
  return { ...env, ...extra };
}

/** Resident set size of a process in MiB, from /proc/<pid>/status (VmRSS); NaN if unreadable. */
export function rssMb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/**
 * CPU time (user + system) in ms that a process, or one of its threads (`tid`; the main thread's
 * is the pid), has used, from /proc (Linux; the kernel counts in ticks of 10 ms, USER_HZ = 100,
 * so this is meant for windows of seconds). NaN if unreadable.
 */
export function cpuMs(pid: number, tid?: number): number {
  try {
    const stat = readFileSync(
      tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`,
      'utf8',
    );
    // After "pid (comm) ", utime and stime are the 12th and 13th fields (stat fields 14 and 15).
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return NaN;
  }
}

/** Samples a process's RSS every `everyMs` until stopped; returns the maximum seen. */
export function rssSampler(pid: number, everyMs = 50): { stop(): number } {
  let max = rssMb(pid);
  const t = setInterval(() => {
    const v = rssMb(pid);
    if (v > max) max = v;
  }, everyMs);
  return {
    stop() {
      clearInterval(t);
      return Math.max(max, rssMb(pid));
    },
  };
}
