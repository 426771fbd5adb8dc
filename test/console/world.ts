/**
 * What the console tests share: the fake gateway, `startServe` exactly as `tokenmeter serve` runs
 * it (config file, two price files in two currencies, a SQLite audit file with body capture), and
 * real traffic from the real `openai` and `@anthropic-ai/sdk` clients.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { join } from 'node:path';
import { startServe, type RunningServer } from '../../src/cli/serve.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { openWriterConnection } from '../../src/sinks/audit/connection.js';
import { recordToRow, type Row as DbRow } from '../../src/sinks/audit/row.js';
import { fullRecord } from '../audit/records.js';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import { makeTempDir, waitForRows, writeFile, type Row, type TempDir } from '../e2e/helpers.js';
import { request } from '../proxy/http-helpers.js';

export const XSS_MODEL = '<img src=x onerror=alert(1)>';

const USD_PRICES = `currency: USD
unit: 1M
prices:
  - model: gpt-4o-mini
    input: 0.15
    output: 0.6
  - model: claude-haiku-4-5
    input: 1
    output: 5
`;
const CNY_PRICES = `currency: CNY
unit: 1M
prices:
  - model: deepseek-chat
    input: 2
    output: 3
`;

export interface ConsoleWorld {
  gateway: FakeGateway;
  tmp: TempDir;
  dbPath: string;
  running: RunningServer;
  base: string;
  stop(): Promise<void>;
}

/** Starts a gateway and serve with `extraConfig` appended to the config file. */
export async function startConsoleWorld(
  extraConfig = '',
  flags: { db?: string | false; console?: boolean } = {},
): Promise<ConsoleWorld> {
  const gateway = await startFakeGateway();
  const tmp = makeTempDir('tm-console-');
  writeFile(tmp.dir, 'usd.yaml', USD_PRICES);
  writeFile(tmp.dir, 'cny.yaml', CNY_PRICES);
  const config = writeFile(
    tmp.dir,
    'tokenmeter.yaml',
    `presets: false
prices: [usd.yaml, cny.yaml]
audit:
  capture_bodies: true
${extraConfig}`,
  );
  const dbPath = join(tmp.dir, 'audit.db');
  let running: RunningServer;
  try {
    running = await startServe(
      {
        upstream: `${gateway.url}/v1`,
        port: '0',
        db: flags.db ?? dbPath,
        config,
        logLevel: 'silent',
        console: flags.console,
      },
      { OTEL_SDK_DISABLED: 'true' },
      tmp.dir,
      SILENT_LOGGER,
    );
  } catch (err) {
    await gateway.close();
    tmp.remove();
    throw err;
  }
  return {
    gateway,
    tmp,
    dbPath,
    running,
    base: `http://127.0.0.1:${running.port}`,
    async stop() {
      await running.stop();
      await gateway.close();
      tmp.remove();
    },
  };
}

/**
 * Real SDK traffic: two apps, three priced models in two currencies, one unpriced model, one
 * upstream error, one streamed request, and (optionally) a model named like an XSS probe.
 * Returns once every record is in the audit file.
 */
export async function sendTraffic(world: ConsoleWorld, opts: { xss?: boolean } = {}): Promise<Row[]> {
  const openai = (app: string) =>
    new OpenAI({
      apiKey: 'sk-console-test-key',
      baseURL: `${world.base}/v1`,
      maxRetries: 0,
      defaultHeaders: { 'x-tokenmeter-app': app },
    });
  const anthropic = new Anthropic({
    apiKey: 'sk-console-test-key',
    baseURL: world.base,
    maxRetries: 0,
    defaultHeaders: { 'x-tokenmeter-app': 'beta' },
  });
  const user = (text: string) => [{ role: 'user' as const, content: text }];
  let sent = 0;
  const chat = async (app: string, model: string, text: string, stream = false) => {
    sent++;
    if (stream) {
      const s = await openai(app).chat.completions.create({ model, messages: user(text), stream: true });
      for await (const _chunk of s) {
        // drained: the record is written after the last byte
      }
      return;
    }
    await openai(app).chat.completions.create({ model, messages: user(text) });
  };
  await chat('alpha', 'gpt-4o-mini', 'Hello, please reply to bob@example.com about the plan');
  await chat('beta', 'deepseek-chat', 'Explain keyset pagination in one line');
  await chat('alpha', 'gpt-4o-mini', 'Stream a short greeting', true);
  sent++;
  await anthropic.messages.create({ model: 'claude-haiku-4-5', max_tokens: 64, messages: user('Hi there') });
  await chat('alpha', 'mystery-model-x', 'Nobody priced me');
  sent++;
  await openai('beta')
    .chat.completions.create({ model: 'error-500+gpt-4o-mini', messages: user('fail please') })
    .then(
      () => {
        throw new Error('expected the fake gateway to answer 500');
      },
      (err: unknown) => {
        if (!(err instanceof OpenAI.APIError) || err.status !== 500) throw err;
      },
    );
  if (opts.xss) await chat('alpha', XSS_MODEL, 'probe');
  return waitForRows(world.dbPath, sent);
}

/** GET (or another method) on the console, as raw HTTP (so Host and cookies can be set). */
export function call(
  world: ConsoleWorld,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
) {
  return request(`${world.base}${path}`, opts);
}

export async function getJson<T = Record<string, unknown>>(
  world: ConsoleWorld,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: T; headers: Record<string, unknown> }> {
  const r = await call(world, path, { headers });
  return { status: r.status, body: JSON.parse(r.body.toString()) as T, headers: r.headers };
}

/**
 * Fills a new audit file at `path` with `count` priced requests spread over the last 89 days (7
 * apps, 13 models, two currencies): the real schema (the audit sink's migrations) and the real
 * INSERT, in transactions of 50k rows. 300k rows take a few seconds to build, and a 90-day report
 * by app,model,upstream,day over them about a second to run: a "big log" for the console tests.
 */
export function fillAuditDb(path: string, count: number, nowMs: number = Date.now()): void {
  const conn = openWriterConnection(path, 5_000);
  try {
    for (let start = 0; start < count; start += 50_000) {
      const rows: DbRow[] = [];
      for (let i = start; i < Math.min(count, start + 50_000); i++) {
        rows.push(
          recordToRow(
            fullRecord({
              ts_start: nowMs - 60_000 - Math.floor((i / count) * 89 * 86_400_000),
              app: `app-${i % 7}`,
              request_model: `model-${i % 13}`,
              currency: i % 3 === 0 ? 'CNY' : 'USD',
              cost_nanos: 1_000 + (i % 977),
            }),
          ),
        );
      }
      conn.insertBatch(rows);
    }
  } finally {
    conn.close();
  }
}
