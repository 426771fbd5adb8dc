/**
 * A `block` budget through the real `tokenmeter serve` child process, driven by the real `openai`
 * and `@anthropic-ai/sdk` clients (issue 7 "Done when", DESIGN.md §9): traffic spends it, the next
 * request in scope gets an endpoint-shaped 429 naming the budget (never reaching the upstream),
 * traffic outside the scope passes, the spend survives a restart (gauge = SQLite spend), the
 * `tokenmeter budgets` CLI shows it, and 50 concurrent requests never push spend past the limit.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import { openSqlite } from '../../src/sinks/audit/sqlite.js';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectedUsage, startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import { runCli, samples, startServe, waitFor, type ServeProcess } from './helpers.js';

const API_KEY = 'sk-e2e-budget-secret-key';
// USD per 1K tokens: an input token is 1e6 nanos, an output token 2e6.
const PRICES = `currency: USD
unit: 1K
prices:
  - { model: gpt-4o, input: 1, output: 2 }
  - { model: claude-sonnet-4, input: 1, output: 2 }
`;
const PROMPT = 'hi there';
// max_tokens bounds what a request can cost, so a block budget can reserve it (§9).
const CHAT = { model: 'gpt-4o', max_tokens: 3, messages: [{ role: 'user' as const, content: PROMPT }] };
const usage = expectedUsage('openai', CHAT);
/** Cost of one CHAT request (12 input + 3 output tokens = 0.018 USD). */
const REQUEST_NANOS = BigInt(usage.input) * 1_000_000n + BigInt(usage.output!) * 2_000_000n;

const LIMIT = '0.1';
const LIMIT_NANOS = 100_000_000n;
const BURST_LIMIT_NANOS = 200_000_000n;

let gateway: FakeGateway;
let dir: string;
let configFile: string;
let dbFile: string;
const children: ServeProcess[] = [];

beforeAll(async () => {
  gateway = await startFakeGateway();
  dir = mkdtempSync(join(tmpdir(), 'tm-e2e-budgets-'));
  writeFileSync(join(dir, 'prices.yaml'), PRICES);
  dbFile = join(dir, 'audit.db');
  configFile = join(dir, 'tokenmeter.yaml');
  writeFileSync(
    configFile,
    `db: audit.db
presets: false
prices: [prices.yaml]
upstreams:
  - name: default
    url: ${gateway.url}/v1
budgets:
  - name: alpha-daily
    scope: { app: alpha }
    period: day
    limit: "${LIMIT}"
    currency: USD
    action: block
  - name: burst-daily
    scope: { app: burst }
    period: day
    limit: "0.2"
    currency: USD
    action: block
`,
  );
});
afterAll(async () => {
  for (const c of children) await c.stop();
  await gateway?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function serve(): Promise<ServeProcess> {
  const s = await startServe(['--config', configFile], { cwd: dir });
  children.push(s);
  return s;
}

function openaiClient(base: string, app: string): OpenAI {
  // maxRetries 0: the SDK would otherwise retry the 429 and the test would measure its back-off.
  return new OpenAI({
    apiKey: API_KEY,
    baseURL: `${base}/v1`,
    maxRetries: 0,
    defaultHeaders: { 'x-tokenmeter-app': app },
  });
}

function anthropicClient(base: string, app: string): Anthropic {
  return new Anthropic({
    apiKey: API_KEY,
    baseURL: base,
    maxRetries: 0,
    defaultHeaders: { 'x-tokenmeter-app': app },
  });
}

/** The budget gauge of a running serve, in currency units. */
async function gauge(s: ServeProcess, name: string, budget: string): Promise<number | undefined> {
  const text = await (await fetch(`${s.base}/metrics`)).text();
  return samples(text, name, { budget, currency: 'USD' })[0]?.value;
}

/** Exact period-to-date spend of an app today (UTC day, as configured) from the audit DB. */
function dbSpendNanos(app: string): bigint {
  const dayStart = new Date();
  dayStart.setUTCHours(0, 0, 0, 0);
  const sqlite = openSqlite(dbFile, { readonly: true });
  try {
    const rows = sqlite
      .prepare('SELECT cost_nanos FROM requests WHERE app = ? AND ts_start >= ? AND cost_nanos IS NOT NULL')
      .all(app, dayStart.getTime()) as Array<{ cost_nanos: number }>;
    return rows.reduce((s, r) => s + BigInt(r.cost_nanos), 0n);
  } finally {
    sqlite.close();
  }
}

function rowCount(app: string): number {
  const sqlite = openSqlite(dbFile, { readonly: true });
  try {
    return (sqlite.prepare('SELECT COUNT(*) AS n FROM requests WHERE app = ?').get(app) as { n: number }).n;
  } finally {
    sqlite.close();
  }
}

// The documented message (docs/budgets.md, "Block message"): the request's bound does not fit in
// what is left of this budget (its name, bound, limit, period and what to do).
const BLOCK_MESSAGE =
  /tokenmeter budget "alpha-daily" cannot admit this request: it could cost up to (\d+\.\d+) USD .*more than the \d+\.\d+ USD left of 0\.10? USD this day \(since \d{4}-\d{2}-\d{2}, UTC\).*raise the limit in the budgets: config/;

/** The bound tokenmeter reserved for a blocked request, from its message, in nanos. */
function boundNanos(message: string): bigint {
  const m = /could cost up to (\d+)\.(\d+) USD/.exec(message);
  if (!m) throw new Error(`no bound in: ${message}`);
  return BigInt(m[1]!) * 1_000_000_000n + BigInt(m[2]!.padEnd(9, '0').slice(0, 9));
}

describe('block budget through tokenmeter serve with the real SDK clients', () => {
  it('spends, blocks with endpoint-shaped 429s naming the budget, lets other apps through, survives a restart', async () => {
    const first = await serve();
    const alpha = openaiClient(first.base, 'alpha');
    // Each request is admitted only while spent + its bound (≈0.059: the body's bytes as input
    // tokens, max_tokens as output) ≤ 0.1: three fit (0.036 + 0.059 ≤ 0.1), the fourth does not.
    for (let i = 0; i < 3; i++) {
      const completion = await alpha.chat.completions.create(CHAT);
      expect(completion.choices[0]!.message.content).toBe(`echo: ${PROMPT}`);
    }
    const spentUnits = Number(3n * REQUEST_NANOS) / 1e9;
    // Records are settled just after each response ends; wait for the third before the next check.
    await waitFor('budget spent = 3 requests', async () =>
      (await gauge(first, 'tokenmeter_budget_spent', 'alpha-daily')) === spentUnits ? true : undefined,
    );

    const upstreamBefore = gateway.requests.length;
    const blocked = await alpha.chat.completions.create(CHAT).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(blocked).toBeInstanceOf(OpenAI.APIError);
    const openaiErr = blocked as InstanceType<typeof OpenAI.APIError>;
    expect(openaiErr.status).toBe(429);
    expect(openaiErr.message).toMatch(BLOCK_MESSAGE);
    expect(openaiErr.code).toBe('budget_exceeded');
    expect(openaiErr.type).toBe('budget_exceeded');
    expect(openaiErr.headers?.get('x-tokenmeter-blocked')).toBe('budget');
    // The SDKs retry 429 by default; a budget block tells them not to.
    expect(openaiErr.headers?.get('x-should-retry')).toBe('false');

    const claude = anthropicClient(first.base, 'alpha');
    const anthropicBlocked = await claude.messages
      .create({ model: 'claude-sonnet-4', max_tokens: 32, messages: [{ role: 'user', content: PROMPT }] })
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(anthropicBlocked).toBeInstanceOf(Anthropic.RateLimitError);
    const anthropicErr = anthropicBlocked as InstanceType<typeof Anthropic.APIError>;
    expect(anthropicErr.status).toBe(429);
    expect(anthropicErr.error).toEqual({
      type: 'error',
      error: {
        type: 'rate_limit_error',
        message: expect.stringContaining(
          'tokenmeter budget "alpha-daily" cannot admit this request',
        ) as unknown,
      },
    });
    // count_tokens is free (operation "other"): budgets never gate it, so a blocked app can still
    // size its prompts. It reaches the upstream.
    const counted = await claude.messages.countTokens({
      model: 'claude-sonnet-4',
      messages: [{ role: 'user', content: PROMPT }],
    });
    expect(counted.input_tokens).toBeGreaterThan(0);
    const countCalls = 1;
    // A streamed request is refused before any event: the SDK throws on create().
    const streamBlocked = await alpha.chat.completions.create({ ...CHAT, stream: true }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(streamBlocked).toBeInstanceOf(OpenAI.RateLimitError);
    expect((streamBlocked as Error).message).toMatch(BLOCK_MESSAGE);
    // Blocked requests never reach the upstream (only the free count_tokens call did).
    expect(gateway.requests.length).toBe(upstreamBefore + countCalls);

    // Outside the scope: another app still passes, through both endpoints.
    const beta = openaiClient(first.base, 'beta');
    expect((await beta.chat.completions.create(CHAT)).choices[0]!.message.content).toBe(`echo: ${PROMPT}`);
    const betaMsg = await anthropicClient(first.base, 'beta').messages.create({
      model: 'claude-sonnet-4',
      max_tokens: 16,
      messages: [{ role: 'user', content: PROMPT }],
    });
    expect(betaMsg.content[0]).toMatchObject({ type: 'text', text: `echo: ${PROMPT}` });
    expect(gateway.requests.length).toBe(upstreamBefore + countCalls + 2);

    expect(await first.stop()).toBe(0);
    expect(first.stderr()).not.toContain(API_KEY);
    // The audit log has the 4 blocked requests too (429, no cost), and exactly the admitted spend.
    expect(rowCount('alpha')).toBe(7);
    const spentNanos = dbSpendNanos('alpha');
    expect(spentNanos).toBe(3n * REQUEST_NANOS);

    // Restart on the same DB: the gauge is recomputed from SQLite and the budget still blocks.
    const second = await serve();
    expect(await gauge(second, 'tokenmeter_budget_spent', 'alpha-daily')).toBe(Number(spentNanos) / 1e9);
    expect(await gauge(second, 'tokenmeter_budget_limit', 'alpha-daily')).toBe(Number(LIMIT_NANOS) / 1e9);
    const again = await openaiClient(second.base, 'alpha')
      .chat.completions.create(CHAT)
      .then(
        () => undefined,
        (err: unknown) => err,
      );
    expect(again).toBeInstanceOf(OpenAI.APIError);
    expect((again as InstanceType<typeof OpenAI.APIError>).status).toBe(429);
    expect((again as Error).message).toMatch(BLOCK_MESSAGE);

    // The CLI, as a real child process, reads the same spend from the DB — while serve still has
    // it open, as users run it.
    const table = await runCli(['budgets', '--db', dbFile, '--config', configFile], { cwd: dir });
    expect(table.code).toBe(0);
    const line = table.stdout.split('\n').find((l) => l.startsWith('alpha-daily'));
    expect(line).toBeDefined();
    expect(line).toContain('0.054 USD'); // spent
    expect(line).toContain('0.10 USD'); // limit
    expect(line).toContain('54.0%'); // ratio: the reservation kept spend under the limit

    const json = await runCli(['budgets', '--db', dbFile, '--config', configFile, '--format', 'json'], {
      cwd: dir,
    });
    expect(json.code).toBe(0);
    const status = (JSON.parse(json.stdout) as Array<Record<string, unknown>>).find(
      (s) => s.name === 'alpha-daily',
    );
    expect(status).toMatchObject({
      spent: '0.054',
      limit: '0.1',
      spent_nanos: String(spentNanos),
      limit_nanos: String(LIMIT_NANOS),
      ratio: 0.54,
      exceeded: false,
      action: 'block',
    });
    expect(await second.stop()).toBe(0);
  });

  it('50 concurrent requests against a nearly spent budget never overshoot it (each reserves its bound)', async () => {
    const s = await serve();
    try {
      const burst = openaiClient(s.base, 'burst');
      // 4 × 0.018 = 0.072 of 0.2 spent: room for two more bounds (≈0.059 each), not three.
      for (let i = 0; i < 4; i++) await burst.chat.completions.create(CHAT);
      await waitFor('burst spend settled', async () =>
        (await gauge(s, 'tokenmeter_budget_spent', 'burst-daily')) === Number(4n * REQUEST_NANOS) / 1e9
          ? true
          : undefined,
      );
      const upstreamBefore = gateway.requests.length;
      let bound = 0n;
      const results = await Promise.all(
        Array.from({ length: 50 }, () =>
          burst.chat.completions.create(CHAT).then(
            () => 200,
            (err: unknown) => {
              if (err instanceof OpenAI.APIError && err.status === 429) bound = boundNanos(err.message);
              return err instanceof OpenAI.APIError ? (err.status ?? -1) : -1;
            },
          ),
        ),
      );
      const admitted = results.filter((r) => r === 200).length;
      expect(results.filter((r) => r !== 200 && r !== 429)).toEqual([]);
      // Every admitted request reserved its bound (≈0.059) until its real cost (0.018) settled, so
      // however the 50 interleave: at least the two that fit at once, at most as many as can be
      // admitted while spent + one bound still fits (here four).
      expect(bound).toBeGreaterThan(REQUEST_NANOS);
      const left = BURST_LIMIT_NANOS - 4n * REQUEST_NANOS;
      expect(BigInt(admitted)).toBeGreaterThanOrEqual(left / bound);
      expect(BigInt(admitted)).toBeLessThanOrEqual((left - bound) / REQUEST_NANOS + 1n);
      expect(gateway.requests.length - upstreamBefore).toBe(admitted);
      expect(await s.stop()).toBe(0);

      // The bound is never below the real cost, so spend never passes the limit.
      const spent = dbSpendNanos('burst');
      expect(spent).toBe(BigInt(4 + admitted) * REQUEST_NANOS);
      expect(spent).toBeLessThanOrEqual(BURST_LIMIT_NANOS);
      expect(rowCount('burst')).toBe(54);
    } finally {
      await s.stop();
    }
  });
});
