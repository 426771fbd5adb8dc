/**
 * Issue 6 "Done when", through the real `tokenmeter serve` child process: a burst of mixed
 * real-client traffic (three apps, five models, streamed and not, two errors) at concurrency 8
 * gives exactly one correct row per request; `tokenmeter report --by app,model --format json`
 * equals a hand sum from the fake gateway's documented usage and the price file (exact nanos per
 * currency); SIGTERM during a slow stream drains it, exits 0, and every row is in the DB after a
 * restart.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { join } from 'node:path';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectedUsage, type FakeGateway, type Flavor } from '../fake-gateway/index.js';
import {
  closeWorld,
  readRows,
  runCli,
  serveConfig,
  startServe,
  startWorld,
  waitForRows,
  writeFile,
  type Row,
  type ServeProcess,
  type TempDir,
} from './helpers.js';

const KEYED_KEY = 'sk-burst-keyed-app-key';
const OTHER_KEY = 'sk-burst-other-key';
const REQUESTS = 60;
const CONCURRENCY = 8;
/** Quick requests that complete just before SIGTERM, with the slow stream still in flight. */
const LAST_WAVE = 16;

interface ModelSpec {
  model: string;
  flavor: Flavor;
  kind: 'chat' | 'messages' | 'embeddings';
  currency: 'USD' | 'CNY';
  /** Nanos per token (price per 1M × 1000), so the hand sum is integer arithmetic. */
  input: bigint;
  output: bigint;
  cacheRead?: bigint;
  cacheWrite?: bigint;
  cacheWrite1h?: bigint;
}

const MODELS: ModelSpec[] = [
  { model: 'gpt-4o', flavor: 'openai', kind: 'chat', currency: 'USD', input: 2500n, output: 10_000n },
  {
    model: 'deepseek-chat',
    flavor: 'deepseek',
    kind: 'chat',
    currency: 'CNY',
    input: 270n,
    output: 1100n,
    cacheRead: 70n,
  },
  { model: 'glm-4-flash', flavor: 'glm', kind: 'chat', currency: 'CNY', input: 100n, output: 100n },
  {
    model: 'claude-haiku-4-5',
    flavor: 'anthropic',
    kind: 'messages',
    currency: 'USD',
    input: 1000n,
    output: 5000n,
    cacheRead: 100n,
    cacheWrite: 1250n,
    cacheWrite1h: 2000n,
  },
  {
    model: 'text-embedding-3-small',
    flavor: 'embeddings',
    kind: 'embeddings',
    currency: 'USD',
    input: 20n,
    output: 0n,
  },
];

const USD_PRICES = `currency: USD
unit: 1M
prices:
  - { model: gpt-4o, input: 2.5, output: 10 }
  - { model: claude-haiku-4-5, input: 1, output: 5, cache_read: 0.1, cache_write: 1.25, cache_write_1h: 2 }
  - { model: text-embedding-3-small, input: 0.02, output: 0 }
`;
const CNY_PRICES = `currency: CNY
unit: 1M
prices:
  - { model: deepseek-chat, input: 0.27, output: 1.1, cache_read: 0.07 }
  - { model: glm-4-flash, input: 0.1, output: 0.1 }
`;

type AppMode = 'header' | 'keyed' | 'default';
const APP_NAME: Record<AppMode, string> = { header: 'header-app', keyed: 'keyed-app', default: 'default' };

interface Planned {
  i: number;
  spec: ModelSpec;
  app: AppMode;
  stream: boolean;
  /** error-NNN scenario, if this request is one of the errors. */
  error?: { scenario: string; status: number; type: string };
  marker: string;
  request: Record<string, unknown>;
}

const ERRORS: Record<number, Planned['error']> = {
  7: { scenario: 'error-429', status: 429, type: 'rate_limited' },
  23: { scenario: 'error-500', status: 500, type: 'upstream_error' },
};

function plan(): Planned[] {
  const out: Planned[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const spec = MODELS[i % MODELS.length]!;
    const app = (['header', 'keyed', 'default'] as const)[Math.floor(i / MODELS.length) % 3]!;
    const stream = spec.kind !== 'embeddings' && Math.floor(i / 15) % 2 === 1;
    const marker = `id-${i}-end`;
    const text = `${marker} ${'word '.repeat(i % 7)}`.trim();
    const request: Record<string, unknown> =
      spec.kind === 'embeddings'
        ? { model: spec.model, input: [text, 'second input'] }
        : spec.kind === 'messages'
          ? { model: spec.model, max_tokens: 100, messages: [{ role: 'user', content: text }] }
          : { model: spec.model, messages: [{ role: 'user', content: text }] };
    out.push({ i, spec, app, stream, error: ERRORS[i], marker, request });
  }
  return out;
}

/** Exact cost in nanos of one successful request, by hand from the documented usage. */
function handCost(p: Planned): bigint {
  const e = expectedUsage(p.spec.flavor, p.request);
  let nanos = BigInt(e.input) * p.spec.input;
  if (e.output !== undefined) nanos += BigInt(e.output) * p.spec.output;
  if (e.cacheRead !== undefined) nanos += BigInt(e.cacheRead) * p.spec.cacheRead!;
  if (e.cacheWrite !== undefined) {
    const oneHour = e.cacheWrite1h ?? 0; // fake always states the 1h part when it states writes
    nanos += BigInt(e.cacheWrite - oneHour) * p.spec.cacheWrite! + BigInt(oneHour) * p.spec.cacheWrite1h!;
  }
  return nanos;
}

let gateway: FakeGateway;
let tmp: TempDir;
let dbPath: string;
let configPath: string;
let keyedId: string;
let serve: ServeProcess | undefined;

beforeAll(async () => {
  ({ gateway, tmp, dbPath } = await startWorld('tm-e2e-burst-', {
    'usd.yaml': USD_PRICES,
    'cny.yaml': CNY_PRICES,
  }));
  // The fingerprint comes from the real CLI, against the DB serve will use (same secret).
  const keyId = await runCli(['key-id', KEYED_KEY, '--db', dbPath], { cwd: tmp.dir });
  expect(keyId.code).toBe(0);
  keyedId = keyId.stdout.trim();
  expect(keyedId).toMatch(/^[0-9a-f]{12}$/);
  expect(keyId.stdout + keyId.stderr).not.toContain(KEYED_KEY);
  configPath = writeFile(
    tmp.dir,
    'tokenmeter.yaml',
    `db: audit.db
presets: false
prices: [usd.yaml, cny.yaml]
apps:
  "${keyedId}": keyed-app
upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
`,
  );
  serve = await startServe(['--config', configPath], { cwd: tmp.dir });
}, 60_000);

afterAll(async () => {
  if (serve !== undefined) await serve.stop();
  await closeWorld({ gateway, tmp });
});

/** serve with `<name>.yaml` on its own `<name>.db`: the burst's prices and upstream, plus `extra`. */
function serveOwnDb(name: string, extra = ''): Promise<ServeProcess> {
  return serveConfig(
    tmp.dir,
    `db: ${name}.db
presets: false
prices: [usd.yaml, cny.yaml]
${extra}upstreams:
  - { name: fake, url: "${gateway.url}/v1" }
`,
    `${name}.yaml`,
  );
}

/** POSTs `body` to serve's chat completions as the fake's slow-stream scenario: `chunks`, one every `delayMs`. */
function postSlowStream(
  base: string,
  key: string,
  slow: { delayMs: number; chunks: number },
  body: object,
): Promise<Response> {
  return fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${key}`,
      'content-type': 'application/json',
      'x-fake-scenario': 'slow-stream',
      'x-fake-delay-ms': String(slow.delayMs),
      'x-fake-chunks': String(slow.chunks),
    },
    body: JSON.stringify(body),
  });
}

async function send(base: string, p: Planned): Promise<void> {
  const key = p.app === 'keyed' ? KEYED_KEY : OTHER_KEY;
  const headers: Record<string, string> = {};
  if (p.app === 'header') headers['x-tokenmeter-app'] = APP_NAME.header;
  if (p.error !== undefined) headers['x-fake-scenario'] = p.error.scenario;
  const call = async (): Promise<void> => {
    if (p.spec.kind === 'messages') {
      const client = new Anthropic({ baseURL: base, apiKey: key, maxRetries: 0 });
      const body = p.request as unknown as Anthropic.MessageCreateParamsNonStreaming;
      if (p.stream) await client.messages.stream(body, { headers }).finalMessage();
      else await client.messages.create(body, { headers });
      return;
    }
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
    if (p.spec.kind === 'embeddings') {
      await client.embeddings.create(p.request as unknown as OpenAI.EmbeddingCreateParams, { headers });
      return;
    }
    if (p.stream) {
      const body = p.request as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming;
      const stream = await client.chat.completions.create(
        { ...body, stream: true },
        {
          headers,
        },
      );
      for await (const _chunk of stream) {
        // drain
      }
    } else {
      await client.chat.completions.create(
        p.request as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming,
        { headers },
      );
    }
  };
  if (p.error === undefined) {
    await call();
  } else {
    await expect(call()).rejects.toMatchObject({ status: p.error.status });
  }
}

/** The fake's request id of a planned request, found by the marker in the body it received. */
function requestIdOf(p: Planned): string {
  const indexes = gateway.requests
    .map((r, index) => (r.body.toString('utf8').includes(`"${p.marker}`) ? index : -1))
    .filter((index) => index >= 0);
  expect(indexes).toHaveLength(1);
  return `req-${indexes[0]! + 1}`;
}

interface ReportGroup {
  app: string;
  model: string;
  currency: string | null;
  requests: number;
  cost_nanos: string | null;
}

describe('burst of mixed traffic through tokenmeter serve', () => {
  const planned = plan();

  it('one correct row per request, and the report equals the hand sum', async () => {
    const base = serve!.base;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < planned.length) {
        const p = planned[next++]!;
        await send(base, p);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    expect(gateway.requests).toHaveLength(REQUESTS);

    const rows = await waitForRows(dbPath, REQUESTS);
    expect(rows).toHaveLength(REQUESTS);
    const byRequestId = new Map<string, Row>();
    for (const row of rows) byRequestId.set(row.upstream_request_id ?? '', row);
    expect(byRequestId.size).toBe(REQUESTS);

    const expectedGroups = new Map<string, ReportGroup>();
    for (const p of planned) {
      const row = byRequestId.get(requestIdOf(p));
      expect(row, `row of request ${p.i}`).toBeDefined();
      const e = expectedUsage(p.spec.flavor, p.request);
      const app = APP_NAME[p.app];
      const got = {
        app: row!.app,
        request_model: row!.request_model,
        stream: Boolean(row!.stream),
        http_status: row!.http_status,
        error_type: row!.error_type,
        key_id_is_keyed: row!.key_id === keyedId,
        // Time to first token exists exactly for answered streams, within the request's duration.
        ttft_ok:
          p.stream && p.error === undefined
            ? row!.ttft_ms !== null && row!.ttft_ms >= 0 && row!.ttft_ms <= row!.duration_ms
            : row!.ttft_ms === null,
      };
      expect(got, `request ${p.i}`).toEqual({
        app,
        request_model: p.spec.model,
        stream: p.stream,
        http_status: p.error?.status ?? 200,
        error_type: p.error?.type ?? null,
        key_id_is_keyed: p.app === 'keyed',
        ttft_ok: true,
      });
      let currency: string | null = null;
      let cost: bigint | null = null;
      if (p.error === undefined) {
        currency = p.spec.currency;
        cost = handCost(p);
        expect(
          {
            usage_source: row!.usage_source,
            input: row!.input_tokens,
            output: row!.output_tokens,
            cost_nanos: row!.cost_nanos,
            currency: row!.currency,
          },
          `request ${p.i}`,
        ).toEqual({
          usage_source: 'reported',
          input: e.input,
          output: e.output ?? null,
          cost_nanos: Number(cost),
          currency,
        });
      } else {
        // No usage on an error: the cost is unknown, never 0.
        expect(row!.cost_nanos, `request ${p.i}`).toBeNull();
      }
      const groupKey = `${app}|${p.spec.model}|${currency ?? '-'}`;
      const group = expectedGroups.get(groupKey) ?? {
        app,
        model: p.spec.model,
        currency,
        requests: 0,
        cost_nanos: null,
      };
      group.requests += 1;
      if (cost !== null) group.cost_nanos = String(BigInt(group.cost_nanos ?? '0') + cost);
      expectedGroups.set(groupKey, group);
    }

    // The Prometheus sink saw the same traffic: request count, token partition and money per
    // currency (a float counter there, so compared to 1e-9 of a unit).
    const metrics = await (await fetch(`${base}/metrics`)).text();
    const sumOf = (name: string, labelFilter: RegExp = /.*/): number =>
      metrics
        .split('\n')
        .filter((l) => l.startsWith(`${name}{`) && labelFilter.test(l))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    expect(sumOf('tokenmeter_requests_total')).toBe(REQUESTS);
    // The token partition per type equals the DB's column sums (NULL rows, the errors, add nothing).
    for (const [type, column] of [
      ['input', 'input_tokens'],
      ['cache_read', 'cache_read_tokens'],
      ['cache_write', 'cache_write_tokens'],
      ['output', 'output_tokens'],
    ] as const) {
      const fromRows = rows.reduce((sum, r) => (r[column] === null ? sum : sum + r[column]), 0);
      expect([type, sumOf('tokenmeter_tokens_total', new RegExp(`type="${type}"`))]).toEqual([
        type,
        fromRows,
      ]);
    }
    for (const currency of ['USD', 'CNY']) {
      const hand = [...expectedGroups.values()]
        .filter((g) => g.currency === currency)
        .reduce((sum, g) => sum + BigInt(g.cost_nanos ?? '0'), 0n);
      expect(
        Math.abs(sumOf('tokenmeter_cost_total', new RegExp(`currency="${currency}"`)) - Number(hand) / 1e9),
      ).toBeLessThan(1e-9);
    }

    const report = await runCli(['report', '--config', configPath, '--by', 'app,model', '--format', 'json'], {
      cwd: tmp.dir,
    });
    expect(report.stderr).toBe('');
    expect(report.code).toBe(0);
    const parsed = JSON.parse(report.stdout) as {
      groups: Array<ReportGroup & Record<string, unknown>>;
      totals: Array<{ currency: string | null; requests: number; cost_nanos: string | null }>;
      caveats: Record<string, number>;
    };
    const pick = (g: ReportGroup): ReportGroup => ({
      app: g.app,
      model: g.model,
      currency: g.currency,
      requests: g.requests,
      cost_nanos: g.cost_nanos,
    });
    const order = (a: ReportGroup, b: ReportGroup): number =>
      `${a.app}|${a.model}|${a.currency}`.localeCompare(`${b.app}|${b.model}|${b.currency}`);
    expect(parsed.groups.map(pick).sort(order)).toEqual([...expectedGroups.values()].sort(order));

    // Per-currency totals: exact nanos, USD and CNY never mixed.
    const totals = new Map<string, { requests: number; nanos: bigint | null }>();
    for (const g of expectedGroups.values()) {
      const t = totals.get(g.currency ?? '-') ?? { requests: 0, nanos: null };
      t.requests += g.requests;
      if (g.cost_nanos !== null) t.nanos = (t.nanos ?? 0n) + BigInt(g.cost_nanos);
      totals.set(g.currency ?? '-', t);
    }
    expect(
      parsed.totals
        .map((t) => ({ currency: t.currency ?? '-', requests: t.requests, cost_nanos: t.cost_nanos }))
        .sort((a, b) => a.currency.localeCompare(b.currency)),
    ).toEqual(
      [...totals.entries()]
        .map(([currency, t]) => ({
          currency,
          requests: t.requests,
          cost_nanos: t.nanos === null ? null : t.nanos.toString(),
        }))
        .sort((a, b) => a.currency.localeCompare(b.currency)),
    );
  }, 120_000);

  it('SIGTERM during a slow stream: drained to the client, exit 0, every row present after restart', async () => {
    const running = serve!;
    const request = {
      model: 'gpt-4o',
      stream: true,
      messages: [{ role: 'user', content: 'drain-marker one two three' }],
    };
    const res = await postSlowStream(running.base, KEYED_KEY, { delayMs: 100, chunks: 12 }, request);
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(first.done).toBe(false);
    // A last wave of quick requests completes while the stream is in flight; SIGTERM follows at
    // once, without waiting for the audit queue to flush them.
    const lastWave = planned.slice(0, LAST_WAVE).map((p) => ({
      ...p,
      marker: `wave-${p.i}-end`,
      request: { ...p.request, model: p.spec.model },
      error: undefined,
      stream: false,
    }));
    await Promise.all(lastWave.map((p) => send(running.base, p)));
    running.child.kill('SIGTERM');
    const deadline = Date.now() + 10_000;
    while (!running.stderr().includes('"msg":"shutting down"') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    // Once shutting down, a new request is refused (listener and idle keep-alive sockets closed).
    await expect(fetch(`${running.base}/healthz`)).rejects.toBeDefined();
    let text = new TextDecoder().decode(first.value);
    for (let i = 0; i < 10_000; i++) {
      const r = await reader.read();
      if (r.done) break;
      text += new TextDecoder().decode(r.value);
    }
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(text).toContain('"finish_reason":"stop"');
    expect(await running.exited).toBe(0);
    serve = undefined;

    // Everything is on disk once the process is gone.
    const rows = readRows(dbPath);
    expect(rows).toHaveLength(REQUESTS + 1 + LAST_WAVE);
    const drained = rows.find((r) => r.upstream_request_id === `req-${REQUESTS + 1}`);
    // Every request of the last wave has its row too.
    const ids = new Set(rows.map((r) => r.upstream_request_id));
    for (let n = REQUESTS + 2; n <= REQUESTS + 1 + LAST_WAVE; n++) expect(ids.has(`req-${n}`)).toBe(true);
    const e = expectedUsage('openai', request, { chunks: 12 });
    expect({
      app: drained?.app,
      error_type: drained?.error_type,
      usage_source: drained?.usage_source,
      input: drained?.input_tokens,
      output: drained?.output_tokens,
      cost_nanos: drained?.cost_nanos,
    }).toEqual({
      app: 'keyed-app',
      error_type: null,
      usage_source: 'reported',
      input: e.input,
      output: 12,
      cost_nanos: e.input * 2500 + 12 * 10_000,
    });

    // Restart on the same DB: the rows are still there, the key fingerprint is unchanged, and
    // new rows append.
    serve = await startServe(['--config', configPath], { cwd: tmp.dir });
    const client = new OpenAI({ baseURL: `${serve.base}/v1`, apiKey: KEYED_KEY, maxRetries: 0 });
    await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'again' }] });
    const total = REQUESTS + 2 + LAST_WAVE;
    const after = await waitForRows(dbPath, total);
    expect(after).toHaveLength(total);
    const last = after.find((r) => r.upstream_request_id === `req-${total}`);
    expect([last?.app, last?.key_id]).toEqual(['keyed-app', keyedId]);
    expect(await serve.stop()).toBe(0);
    serve = undefined;
  }, 60_000);
  it('a stream longer than shutdown_grace is cut at the deadline: exit 0, row says client_abort', async () => {
    const graceDb = join(tmp.dir, 'grace.db');
    await serve?.stop(); // when run alone (-t), the burst's own serve is still up
    const graceServe = await serveOwnDb('grace', 'limits: { shutdown_grace: 300ms }\n');
    serve = graceServe;
    const res = await postSlowStream(
      graceServe.base,
      OTHER_KEY,
      { delayMs: 200, chunks: 30 },
      { model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'too long' }] },
    );
    const reader = res.body!.getReader();
    expect((await reader.read()).done).toBe(false);
    graceServe.child.kill('SIGTERM');
    let text = '';
    let cut = false;
    try {
      for (let i = 0; i < 10_000; i++) {
        const r = await reader.read();
        if (r.done) break;
        text += new TextDecoder().decode(r.value);
      }
    } catch {
      cut = true;
    }
    // Cut, never ended cleanly: a clean end would make a truncated stream look complete.
    expect(cut).toBe(true);
    expect(text).not.toContain('[DONE]');
    expect(await graceServe.exited).toBe(0);
    serve = undefined;
    const rows = readRows(graceDb);
    expect(rows).toHaveLength(1);
    // Our own shutdown cut it, not the upstream: client_abort (docs/proxy.md), usage estimated.
    expect([rows[0]!.error_type, rows[0]!.usage_source, rows[0]!.cost_source]).toEqual([
      'client_abort',
      'estimated',
      'computed',
    ]);
    // The upstream generation was stopped too.
    expect(gateway.requests.at(-1)!.aborted).toBe(true);
  }, 60_000);
  const WRITE_FAILED = '"msg":"audit log write failed; records stay queued and are retried"';

  it('traffic first: a DB locked by another process delays rows, never requests; all rows land', async () => {
    await serve?.stop();
    const lockedDb = join(tmp.dir, 'contended.db');
    const lockedServe = await serveOwnDb('contended');
    serve = lockedServe;
    const client = new OpenAI({ baseURL: `${lockedServe.base}/v1`, apiKey: OTHER_KEY, maxRetries: 0 });
    const ask = (text: string) =>
      client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: text }] });
    await ask('before the lock');
    await waitForRows(lockedDb, 1);

    const locker = openSqlite(lockedDb);
    locker.exec('BEGIN EXCLUSIVE');
    const WHILE_LOCKED = 10;
    try {
      for (let i = 0; i < WHILE_LOCKED; i++) {
        const res = await ask(`during the lock ${i}`);
        expect(res.choices[0]?.message.content).toBe(`echo: during the lock ${i}`);
      }
      // Hold the lock until the writer has tried (and failed) at least once.
      const deadline = Date.now() + 10_000;
      while (!lockedServe.stderr().includes(WRITE_FAILED) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      expect(lockedServe.stderr()).toContain(WRITE_FAILED);
      expect(locker.prepare('SELECT count(*) AS n FROM requests').get()).toEqual({ n: 1 });
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
    }
    const rows = await waitForRows(lockedDb, 1 + WHILE_LOCKED, 20_000);
    expect(rows).toHaveLength(1 + WHILE_LOCKED);
    expect(rows.every((r) => r.http_status === 200 && r.usage_source === 'reported')).toBe(true);
    // The failure was logged once (not once per retry), and the recovery too. The rows are visible
    // once the writer thread commits; "recovered" is logged when the main thread gets that job's
    // result, a moment later, so wait for that line first.
    const RECOVERED = '"msg":"audit log writes recovered"';
    const logDeadline = Date.now() + 10_000;
    while (!lockedServe.stderr().includes(RECOVERED) && Date.now() < logDeadline)
      await new Promise((r) => setTimeout(r, 20));
    const stderr = lockedServe.stderr();
    const logLines = stderr.trim().split('\n');
    expect(
      logLines.filter((l) => l.includes(WRITE_FAILED)),
      stderr,
    ).toHaveLength(1);
    expect(
      logLines.filter((l) => l.includes(RECOVERED)),
      stderr,
    ).toHaveLength(1);
    expect(await lockedServe.stop()).toBe(0);
    serve = undefined;
  }, 60_000);
});
