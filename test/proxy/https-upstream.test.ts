/**
 * An HTTPS upstream, as every relay gateway in ../shared/seeds is: `tokenmeter serve` as a child
 * process in front of a TLS server on 127.0.0.1 (test/fixtures/tls: a self-signed certificate).
 * The certificate is verified, never skipped: trusted the way a user trusts a private CA
 * (`NODE_EXTRA_CA_CERTS`), the request is proxied, metered and recorded; untrusted, the client
 * gets a 502 naming the TLS error and the record says `network`.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';

const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');
const TSX = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
const CERT = join(ROOT, 'test/fixtures/tls/cert.pem');
const KEY = join(ROOT, 'test/fixtures/tls/key.pem');

const COMPLETION = JSON.stringify({
  id: 'chatcmpl-tls',
  object: 'chat.completion',
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13 },
});

let server: https.Server;
let upstream: string;
let dir: string;
const seen: string[] = [];
beforeAll(async () => {
  server = https.createServer({ cert: readFileSync(CERT), key: readFileSync(KEY) }, (req, res) => {
    seen.push(`${req.method} ${req.url}`);
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(COMPLETION);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  upstream = `https://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  dir = mkdtempSync(join(tmpdir(), 'tm-tls-'));
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  rmSync(dir, { recursive: true, force: true });
});

/** `serve` in front of the TLS upstream; resolves with its base URL, a stop function and its stderr. */
async function serve(db: string, extraEnv: NodeJS.ProcessEnv) {
  const env: NodeJS.ProcessEnv = { OTEL_SDK_DISABLED: 'true' };
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith('TOKENMETER_') && !k.startsWith('OTEL_') && k !== 'NODE_EXTRA_CA_CERTS') env[k] = v;
  const child = spawn(
    process.execPath,
    ['--import', TSX, MAIN, 'serve', '--upstream', upstream, '--port', '0', '--db', db],
    { cwd: dir, env: { ...env, ...extraEnv }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const port = await new Promise<number>((resolvePort, reject) => {
    const t = setInterval(() => {
      const m = /"msg":"listening".*?"port":(\d+)/.exec(stderr);
      if (m) {
        clearInterval(t);
        resolvePort(Number(m[1]));
      }
    }, 20);
    void exited.then((code) => {
      clearInterval(t);
      reject(new Error(`serve exited ${code}: ${stderr}`));
    });
  });
  return {
    base: `http://127.0.0.1:${port}`,
    stderr: () => stderr,
    stop: async () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

const chat = (base: string) =>
  fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer sk-tls-test-key' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
  });

function rows(db: string): Array<Record<string, unknown>> {
  const conn = openSqlite(db, { readonly: true });
  try {
    return conn.prepare('SELECT * FROM requests ORDER BY ts_start').all() as Array<Record<string, unknown>>;
  } finally {
    conn.close();
  }
}

describe('an HTTPS upstream (§3.1)', () => {
  it('with its certificate trusted (NODE_EXTRA_CA_CERTS): proxied byte for byte and recorded', async () => {
    const db = join(dir, 'trusted.db');
    const s = await serve(db, { NODE_EXTRA_CA_CERTS: CERT });
    const before = seen.length;
    const r1 = await chat(s.base);
    expect(r1.status).toBe(200);
    expect(await r1.text()).toBe(COMPLETION);
    const r2 = await chat(s.base);
    expect(r2.status).toBe(200);
    await r2.text();
    expect(seen.slice(before)).toEqual(['POST /v1/chat/completions', 'POST /v1/chat/completions']);
    expect(await s.stop()).toBe(0);
    const stored = rows(db);
    expect(stored).toHaveLength(2);
    expect(stored[0]).toMatchObject({
      http_status: 200,
      error_type: null,
      usage_source: 'reported',
      input_tokens: 11,
      output_tokens: 2,
    });
  });

  it('with its certificate not trusted: 502 naming the TLS error, never sent, recorded as network', async () => {
    const db = join(dir, 'untrusted.db');
    const s = await serve(db, {});
    const before = seen.length;
    const r = await chat(s.base);
    expect(r.status).toBe(502);
    const body = (await r.json()) as { error: { type: string; message: string } };
    expect(body.error.type).toBe('upstream_unreachable');
    expect(body.error.message).toMatch(/SELF_SIGNED|CERT/);
    expect(seen.length).toBe(before); // the TLS handshake failed: the upstream never got the request
    expect(await s.stop()).toBe(0);
    const [row] = rows(db);
    expect(row).toMatchObject({ error_type: 'network', http_status: null });
    expect(s.stderr()).not.toContain('sk-tls-test-key');
  });
});
