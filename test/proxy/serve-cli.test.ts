/**
 * `tokenmeter serve` as a real child process with the real runtime (meter, metrics, SQLite audit
 * log) in front of the fake gateway: starts, proxies, exposes /metrics, drains a stream on SIGTERM,
 * flushes the audit log and exits 0.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';

const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');
// Resolved here because the child runs in a temp dir (so no ./tokenmeter.yaml is picked up).
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

let gateway: FakeGateway;
let dir: string;
beforeAll(async () => {
  gateway = await startFakeGateway();
  dir = mkdtempSync(join(tmpdir(), 'tm-serve-'));
});
afterAll(async () => {
  await gateway?.close();
  rmSync(dir, { recursive: true, force: true });
});

function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_')) env[k] = v;
  env.OTEL_SDK_DISABLED = 'true';
  return env;
}

function run(args: string[]): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], {
    cwd: dir,
    env: cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  return { child, stderr: () => err, exited };
}

describe('tokenmeter serve', () => {
  it('exits 2 with one line when no upstream is configured', async () => {
    const p = run(['serve', '--no-db']);
    expect(await p.exited).toBe(2);
    const lines = p.stderr().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^tokenmeter: no upstream: pass --upstream URL/);
  });

  it('proxies, serves /metrics, drains a stream on SIGTERM, writes the audit log, exits 0', async () => {
    const db = join(dir, 'audit.db');
    const p = run(['serve', '--upstream', `${gateway.url}/v1`, '--port', '0', '--db', db, '--no-presets']);
    const port = await new Promise<number>((resolvePort, reject) => {
      const t = setInterval(() => {
        const m = /"msg":"listening".*?"port":(\d+)/.exec(p.stderr());
        if (m) {
          clearInterval(t);
          resolvePort(Number(m[1]));
        }
      }, 20);
      p.exited.then((code) => reject(new Error(`serve exited ${code}: ${p.stderr()}`)));
    });
    const base = `http://127.0.0.1:${port}`;
    const headers = { authorization: 'Bearer sk-test-secret-key', 'content-type': 'application/json' };

    const chat = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi there' }] }),
    });
    expect(chat.status).toBe(200);
    expect(((await chat.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBeGreaterThan(
      0,
    );

    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/tokenmeter_requests_total\{[^}]*upstream="default"/);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);

    // A slow stream in flight when SIGTERM arrives is allowed to finish.
    const stream = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...headers, 'x-fake-scenario': 'slow-stream', 'x-fake-delay-ms': '80' },
      body: JSON.stringify({
        model: 'gpt-4o',
        stream: true,
        messages: [{ role: 'user', content: 'a b c d' }],
      }),
    });
    const reader = stream.body!.getReader();
    const first = await reader.read();
    expect(first.done).toBe(false);
    p.child.kill('SIGTERM');
    let text = new TextDecoder().decode(first.value);
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(await p.exited).toBe(0);

    const logLines = p.stderr().trim().split('\n');
    for (const l of logLines) expect(() => JSON.parse(l)).not.toThrow();
    expect(p.stderr()).not.toContain('sk-test-secret-key');
    expect(p.stderr()).toContain('"msg":"shutting down"');

    const sqlite = openSqlite(db, { readonly: true });
    try {
      const rows = sqlite.prepare('SELECT operation, stream FROM requests ORDER BY ts_start').all() as Array<{
        operation: string;
        stream: number;
      }>;
      expect(rows.map((r) => [r.operation, Boolean(r.stream)])).toEqual([
        ['chat', false],
        ['chat', true],
      ]);
    } finally {
      sqlite.close();
    }
  });
});
