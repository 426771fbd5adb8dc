import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import {
  balancePollTargets,
  balanceUrl,
  parseBalance,
  startBalancePoller,
  type BalancePoller,
} from '../../src/balance.js';
import type { UpstreamSettings } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { createMetricsSink } from '../../src/sinks/metrics.js';
import { waitFor } from '../e2e/helpers.js';
import { parseExposition, valueOf } from './exposition.js';

const KEY = 'sk-balance-secret-123';

interface FakeGateway {
  url: string;
  hits: Array<{ path: string; headers: IncomingHttpHeaders }>;
  /** What the next responses are: seed 004 body by default. */
  reply: { status: number; body: string };
  nextHit(): Promise<void>;
}

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  while (cleanup.length > 0) await cleanup.pop()!();
});

async function fakeGateway(): Promise<FakeGateway> {
  const waiters: Array<() => void> = [];
  const gw: FakeGateway = {
    url: '',
    hits: [],
    // Seed 004 (dieyu) GET /v1/balance response.
    reply: {
      status: 200,
      body: JSON.stringify({
        object: 'balance',
        currency: 'CNY',
        balance: 138.5,
        api_key: { id: '1923456789012345678', name: 'claude-code', daily_budget: 20.0, daily_used: 3.25 },
      }),
    },
    nextHit: () => new Promise<void>((resolve) => waiters.push(resolve)),
  };
  const server = createServer((req, res) => {
    gw.hits.push({ path: req.url ?? '', headers: req.headers });
    res.writeHead(gw.reply.status, { 'content-type': 'application/json' });
    res.end(gw.reply.body, () => waiters.splice(0).forEach((w) => w()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  gw.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return gw;
}

function upstream(name: string, url: string, balance?: UpstreamSettings['balance']): UpstreamSettings {
  return {
    name,
    url: new URL(url),
    headers: { 'x-group': 'vip' },
    connectTimeoutMs: 1000,
    idleTimeoutMs: 1000,
    injectUsage: true,
    trustReportedCost: false,
    balance,
  };
}

function harness(upstreams: UpstreamSettings[]) {
  const metrics = createMetricsSink({ maxModels: 10, maxApps: 10, apps: [] });
  const lines: string[] = [];
  const poller: BalancePoller = startBalancePoller({
    upstreams,
    metrics,
    log: createLogger('debug', (l) => lines.push(l)),
    timeoutMs: 2000,
  });
  cleanup.push(() => poller.stop());
  const balance = async (name: string, currency = 'CNY') =>
    valueOf(parseExposition((await metrics.render()).body), 'tokenmeter_upstream_balance', {
      upstream: name,
      currency,
    });
  return { poller, lines, balance };
}

describe('upstream balance poller', () => {
  it('polls GET /v1/balance with the configured key and exports the balance gauge', async () => {
    const gw = await fakeGateway();
    const first = gw.nextHit();
    const { balance, lines } = harness([
      upstream('dieyu', `${gw.url}/v1`, { path: '/v1/balance', intervalMs: 1000, apiKey: KEY }),
      upstream('plain', `${gw.url}/v1`), // no balance: never polled
    ]);
    await first;
    // The answer is on the wire; the poller reads it on a later turn: wait for the gauge.
    await waitFor('the first balance', async () => ((await balance('dieyu')) === 138.5 ? true : undefined));
    expect(await balance('plain')).toBeUndefined();
    expect(gw.hits).toHaveLength(1);
    expect(gw.hits[0]!.path).toBe('/v1/balance'); // not /v1/v1/balance
    expect(gw.hits[0]!.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(gw.hits[0]!.headers['x-group']).toBe('vip');

    // It polls again at its interval and follows the new value.
    gw.reply = { status: 200, body: JSON.stringify({ object: 'balance', currency: 'CNY', balance: 120.25 }) };
    await gw.nextHit();
    await waitFor('the new balance', async () => ((await balance('dieyu')) === 120.25 ? true : undefined));
    expect(lines.join('')).not.toContain(KEY);
  });

  it('never throws on failures, logs once per failing spell, and recovers', async () => {
    const gw = await fakeGateway();
    gw.reply = { status: 401, body: '{"error":{"message":"invalid key"}}' };
    const { poller, balance, lines } = harness([
      upstream('dieyu', gw.url, { path: '/v1/balance', intervalMs: 60_000, apiKey: KEY }),
    ]);
    await poller.pollNow();
    gw.reply = { status: 200, body: 'not json' };
    await poller.pollNow();
    gw.reply = { status: 200, body: '{"object":"balance","balance":null}' };
    await poller.pollNow();
    const failures = () => lines.filter((l) => l.includes('balance poll failed'));
    expect(failures()).toHaveLength(1);
    expect(JSON.parse(failures()[0]!)).toMatchObject({ upstream: 'dieyu', error: 'HTTP 401' });
    expect(await balance('dieyu')).toBeUndefined(); // a failure is not a zero balance

    gw.reply = { status: 200, body: '{"object":"balance","currency":"CNY","balance":"99.5"}' };
    await poller.pollNow();
    expect(await balance('dieyu')).toBe(99.5);
    expect(lines.filter((l) => l.includes('recovered'))).toHaveLength(1);
    gw.reply = { status: 503, body: '' };
    await poller.pollNow();
    expect(failures()).toHaveLength(2); // a new failing spell is logged again
    expect(await balance('dieyu')).toBe(99.5); // the last known value stays
    expect(lines.join('')).not.toContain(KEY);
  });

  it('an unreachable upstream is logged, not thrown', async () => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const { poller, lines } = harness([
      upstream('gone', `http://127.0.0.1:${port}/v1`, { path: '/v1/balance', intervalMs: 60_000 }),
    ]);
    await expect(poller.pollNow()).resolves.toBeUndefined();
    expect(
      lines.filter((l) => l.includes('balance poll failed') && l.includes('"upstream":"gone"')),
    ).toHaveLength(1);
  });

  it('leaves an upstream whose billing: source polls the balance to that poller (one poll, one gauge writer)', async () => {
    const gw = await fakeGateway();
    const billing = (source: 'balance' | 'balance_delta' | 'oneapi') => [
      { source, intervalMs: 60_000, apiKey: KEY, quotaPerUnit: 500_000, windowMs: 86_400_000 },
    ];
    // One balance path per upstream, so the gateway's hits say who was polled.
    const cfg = (name: string) => ({ path: `/${name}/balance`, intervalMs: 60_000, apiKey: KEY });
    const make = (name: string, source?: 'balance' | 'balance_delta' | 'oneapi') => ({
      ...upstream(name, `${gw.url}/v1`, cfg(name)),
      ...(source ? { billing: billing(source) } : {}),
    });
    const all = [
      make('both', 'balance'),
      make('delta', 'balance_delta'),
      make('other', 'oneapi'),
      make('only'),
    ];
    expect(balancePollTargets(all).map((u) => u.name)).toEqual(['other', 'only']);
    // Started with all four, the poller hits the gateway for those two only.
    const { poller } = harness(all);
    await poller.pollNow();
    expect(new Set(gw.hits.map((h) => h.path))).toEqual(new Set(['/v1/other/balance', '/v1/only/balance']));
  });

  it('joins the balance path like proxied paths: absolute URLs kept, upstream query dropped', () => {
    expect(balanceUrl(new URL('https://h/v1'), 'https://other.example/bal').href).toBe(
      'https://other.example/bal',
    );
    expect(balanceUrl(new URL('https://h:8443/v1?k=1'), '/v1/balance').href).toBe(
      'https://h:8443/v1/balance',
    );
    expect(balanceUrl(new URL('https://h/v1'), 'v1/balance').href).toBe('https://h/v1/balance');
    expect(balanceUrl(new URL('https://h/v1'), '//evil.example/balance').href).toBe(
      'https://h/v1/evil.example/balance',
    );
  });

  it('joins the balance path onto the upstream URL without doubling /v1', () => {
    expect(balanceUrl(new URL('https://h/v1'), '/v1/balance').href).toBe('https://h/v1/balance');
    expect(balanceUrl(new URL('https://h'), '/v1/balance').href).toBe('https://h/v1/balance');
    expect(balanceUrl(new URL('https://h/api/v1'), '/v1/balance').href).toBe('https://h/api/v1/balance');
    expect(balanceUrl(new URL('https://h/api'), '/v1/balance').href).toBe('https://h/api/v1/balance');
    expect(parseBalance({ currency: 'usd', balance: 1 })).toBeUndefined();
    expect(parseBalance({ currency: 'USD', balance: 0 })).toEqual({ currency: 'USD', amount: 0 });
  });
});
