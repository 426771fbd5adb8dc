/**
 * The console's JSON API (docs/console.md) against a real `tokenmeter serve` (startServe, as the
 * CLI runs it) after real SDK traffic through it: what the API answers is checked against the
 * rows in the SQLite file and against `tokenmeter report`'s own code for the same window.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { budgetsCommand } from '../../src/cli/budgets.js';
import { reportCommand } from '../../src/cli/report.js';
import { formatNanos, nanosToDecimalText } from '../../src/pricing/money.js';
import { rowToRecord } from '../../src/sinks/audit/row.js';
import { CSP } from '../../src/console/index.js';
import { COST_SOURCES, ERROR_TYPES, USAGE_SOURCES } from '../../src/record.js';
import { runCli, ROOT, type Row } from '../e2e/helpers.js';
import { call, getJson, sendTraffic, startConsoleWorld, type ConsoleWorld } from './world.js';

type Json = Record<string, unknown>;
type Page = { audit: boolean; rows: Json[]; next: string | null; audit_reason?: string };

let world: ConsoleWorld;
let rows: Row[];
/** DB rows newest first, the API's order. */
let newestFirst: Row[];

beforeAll(async () => {
  world = await startConsoleWorld(
    'budgets:\n  - { name: alpha-usd, scope: { app: alpha }, period: day, limit: 10, currency: USD }\n',
  );
  rows = await sendTraffic(world);
  newestFirst = [...rows].sort((a, b) => b.ts_start - a.ts_start || (a.id < b.id ? 1 : -1));
});
afterAll(async () => {
  await world?.stop();
});

const page = async (query: string) => {
  const r = await getJson<Page>(world, `/-/api/requests${query}`);
  expect(r.status).toBe(200);
  return r.body;
};

describe('GET /-/api/requests', () => {
  it('lists every request newest first, each field equal to its DB row, cost as `report` prints it', async () => {
    const p = await page('');
    expect(p.audit).toBe(true);
    expect(p.rows.map((r) => r.id)).toEqual(newestFirst.map((r) => r.id));
    for (const [i, api] of p.rows.entries()) {
      const db = newestFirst[i]!;
      const { cost, cost_text, upstream_reported_cost, ...fields } = api;
      expect(fields).toEqual(rowToRecord(db as unknown as Record<string, unknown>));
      expect(cost).toBe(db.cost_nanos === null ? null : nanosToDecimalText(db.cost_nanos));
      expect(cost_text).toBe(db.cost_nanos === null ? null : formatNanos(db.cost_nanos));
      expect(upstream_reported_cost).toBe(
        db.upstream_reported_cost_nanos === null ? null : nanosToDecimalText(db.upstream_reported_cost_nanos),
      );
    }
    // The traffic really had both currencies and an unpriced request.
    expect(new Set(rows.map((r) => r.currency))).toEqual(new Set(['USD', 'CNY', null]));
  });

  it.each([
    ['app=alpha', (r: Row) => r.app === 'alpha'],
    ['model=deepseek-chat', (r: Row) => r.request_model === 'deepseek-chat'],
    ['upstream=default', (r: Row) => r.upstream === 'default'],
    ['status=5xx', (r: Row) => r.http_status !== null && r.http_status >= 500],
    ['status=200', (r: Row) => r.http_status === 200],
    ['error_type=any', (r: Row) => r.error_type !== null],
    ['error_type=none', (r: Row) => r.error_type === null],
    ['usage_source=reported', (r: Row) => r.usage_source === 'reported'],
    ['cost_source=unpriced', (r: Row) => r.cost_source === 'unpriced'],
    ['cost_source=computed&app=beta', (r: Row) => r.cost_source === 'computed' && r.app === 'beta'],
    ['operation=messages', (r: Row) => r.operation === 'messages'],
    ['since=1h', () => true],
    ['until=2000-01-01', () => false],
  ])('filter %s narrows to exactly the matching rows', async (query, keep) => {
    const p = await page(`?${query}`);
    const want = newestFirst.filter(keep).map((r) => r.id);
    expect(p.rows.map((r) => r.id)).toEqual(want);
    if (query !== 'since=1h' && query !== 'upstream=default' && query !== 'error_type=none')
      expect(want.length).toBeLessThan(rows.length);
  });

  it('pages newest first with a keyset cursor', async () => {
    const first = await page('?limit=2');
    expect(first.rows).toHaveLength(2);
    expect(first.next).toBe(first.rows[1]!.id);
    const ids = first.rows.map((r) => r.id);
    let next = first.next;
    while (next !== null) {
      const p = await page(`?limit=2&before=${next}`);
      ids.push(...p.rows.map((r) => r.id));
      next = p.next;
    }
    expect(ids).toEqual(newestFirst.map((r) => r.id));
  });

  it.each([
    ['?since=yesterday', /since: expected 24h, 7d/],
    ['?until=soon', /until: expected/],
    ['?since=1h&until=2h', /since must be before until/],
    ['?status=6xx', /status: expected 2xx/],
    ['?error_type=oops', /error_type: expected one of/],
    ['?usage_source=guessed', /usage_source: expected one of/],
    ['?limit=0', /limit: expected a whole number from 1 to 500/],
    ['?limit=501', /limit: expected a whole number from 1 to 500/],
    ['?modle=gpt-4o-mini', /unknown parameter "modle"/],
    ['?app=a&app=b', /app: give it once/],
    ['?before=01NOPE', /before: no request with id/],
  ])('%s is a 400 saying what is expected', async (query, message) => {
    const r = await getJson<{ error: string }>(world, `/-/api/requests${query}`);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(message);
  });
});

describe('GET /-/api/requests/:id', () => {
  it('answers every record field equal to the DB row, and the captured bodies redacted', async () => {
    for (const db of rows) {
      const r = await getJson<{ record: Json; bodies: Json | null; capture_bodies: boolean }>(
        world,
        `/-/api/requests/${db.id}`,
      );
      expect(r.status).toBe(200);
      const { cost, cost_text, upstream_reported_cost, ...fields } = r.body.record;
      expect(fields).toEqual(rowToRecord(db as unknown as Record<string, unknown>));
      expect([cost, cost_text, upstream_reported_cost]).toHaveLength(3);
      expect(r.body.capture_bodies).toBe(true);
    }
    const withEmail = rows.find((r) => r.request_model === 'gpt-4o-mini' && r.stream === 0)!;
    const d = await getJson<{ bodies: { request: string; response: string } }>(
      world,
      `/-/api/requests/${withEmail.id}`,
    );
    expect(d.body.bodies.request).toContain('please reply to [REDACTED_EMAIL]');
    expect(d.body.bodies.request).not.toContain('bob@example.com');
    expect(d.body.bodies.response).toContain('chat.completion');
  });

  it('is a 404 for an unknown id', async () => {
    const r = await getJson<{ error: string }>(world, '/-/api/requests/01UNKNOWN');
    expect(r.status).toBe(404);
    expect(r.body.error).toMatch(/no request with id/);
  });
});

interface Spend {
  bucket: string;
  by: string | null;
  series: Array<{
    key: string | null;
    currency: string;
    total: string;
    points: Array<{ t: string; cost: string }>;
  }>;
  totals: Json[];
  groups: Json[];
}

describe('GET /-/api/spend and /-/api/report', () => {
  const reportJson = (by?: string) =>
    JSON.parse(
      reportCommand({ db: world.dbPath, since: '1h', format: 'json', by }, {}, world.tmp.dir),
    ) as Json;

  it('totals per currency and per model equal `tokenmeter report` for the same rows', async () => {
    const r = await getJson<Spend>(world, '/-/api/spend?since=1h&by=model');
    expect(r.status).toBe(200);
    const report = reportJson('model');
    expect(r.body.totals).toEqual(report.totals);
    expect(r.body.groups).toEqual(report.groups);
    expect((r.body.totals as Array<{ currency: string }>).map((t) => t.currency)).toEqual([
      'CNY',
      'USD',
      null,
    ]);
    const direct = await getJson<Json>(world, '/-/api/report?since=1h&by=app,model');
    const { from: _f, to: _t, ...apiRest } = direct.body;
    const { from: _f2, to: _t2, ...cliRest } = reportJson('app,model');
    expect(apiRest).toEqual(cliRest);
  });

  it('draws one series per model and currency, whose points add up to the report totals', async () => {
    const r = await getJson<Spend>(world, '/-/api/spend?since=1h&by=model&bucket=hour');
    expect(r.body.bucket).toBe('hour');
    const keys = r.body.series.map((s) => `${s.key}/${s.currency}`).sort();
    expect(keys).toEqual(['claude-haiku-4-5/USD', 'deepseek-chat/CNY', 'gpt-4o-mini/USD']);
    for (const s of r.body.series) {
      expect(s.points.length).toBeGreaterThan(0);
      // Buckets are whole UTC hours.
      for (const p of s.points) expect(Date.parse(p.t) % 3_600_000).toBe(0);
    }
    // Exact: sum the decimal strings as nanos (BigInt), per currency, never across currencies.
    const toNanos = (text: string) => {
      const [whole, frac = ''] = text.split('.');
      return BigInt(whole!) * 1_000_000_000n + BigInt(frac.padEnd(9, '0'));
    };
    const perCurrency = new Map<string, bigint>();
    for (const s of r.body.series)
      for (const p of s.points)
        perCurrency.set(s.currency, (perCurrency.get(s.currency) ?? 0n) + toNanos(p.cost));
    for (const t of r.body.totals as Array<{ currency: string | null; cost: string | null }>) {
      if (t.currency === null) continue;
      expect(nanosToDecimalText(perCurrency.get(t.currency)!)).toBe(t.cost);
    }
  });

  it('rejects a bad by, bucket or a window with too many buckets', async () => {
    for (const [q, m] of [
      ['by=key_id', /by: expected one of app, model, upstream/],
      ['bucket=minute', /bucket: expected one of hour, day/],
      ['since=2000-01-01&bucket=hour', /more than 2000 hour buckets/],
    ] as const) {
      const r = await getJson<{ error: string }>(world, `/-/api/spend?${q}`);
      expect(r.status).toBe(400);
      expect(r.body.error).toMatch(m);
    }
  });
});

describe('GET /-/api/prices, /-/api/budgets, /-/api/status', () => {
  it('shows the effective table and the models seen unpriced, with why', async () => {
    const r = await getJson<{
      prices: Array<{ model: string; currency: string; applies_to: string[]; input: string }>;
      unpriced: Array<{ model: string; requests: number; reason: string }>;
    }>(world, '/-/api/prices');
    expect(r.body.prices.map((p) => `${p.model}:${p.currency}:${p.input}`)).toEqual([
      'deepseek-chat:CNY:2',
      'gpt-4o-mini:USD:0.15',
      'claude-haiku-4-5:USD:1',
    ]);
    expect(r.body.prices.every((p) => p.applies_to.join() === 'default')).toBe(true);
    const unpricedModels = rows.filter((x) => x.cost_source === 'unpriced').map((x) => x.request_model);
    expect(r.body.unpriced.map((u) => u.model).sort()).toEqual([...new Set(unpricedModels)].sort());
    const mystery = r.body.unpriced.find((u) => u.model === 'mystery-model-x')!;
    expect(mystery.requests).toBe(1);
    expect(mystery.reason).toMatch(/mystery-model-x/);
  });

  it('budgets show what `tokenmeter budgets` computes; status names the audit state', async () => {
    const b = await getJson<{ budgets: Json[]; from_audit_log: boolean }>(world, '/-/api/budgets');
    expect(b.body.from_audit_log).toBe(true);
    const cli = JSON.parse(
      budgetsCommand(
        { db: world.dbPath, config: join(world.tmp.dir, 'tokenmeter.yaml'), format: 'json' },
        {},
        world.tmp.dir,
      ),
    ) as Json[];
    const alphaUsd = rows
      .filter((r) => r.app === 'alpha' && r.currency === 'USD')
      .reduce((sum, r) => sum + BigInt(r.cost_nanos!), 0n);
    expect(alphaUsd).toBeGreaterThan(0n);
    expect(b.body.budgets).toHaveLength(1);
    const [api] = b.body.budgets;
    expect(api).toMatchObject({
      name: 'alpha-usd',
      limit: '10',
      spent: nanosToDecimalText(alphaUsd),
      currency: 'USD',
    });
    const pick = (x: Json) => [x.name, x.limit, x.spent, x.period_start, x.warn_at];
    expect(pick(api!)).toEqual(pick(cli[0]!));
    const s = await getJson<Json>(world, '/-/api/status');
    expect(s.body).toMatchObject({ audit: true, capture_bodies: true, auth: false });
    // The page's filter lists come from here, so they cannot drift from the record's.
    expect(s.body).toMatchObject({
      error_types: [...ERROR_TYPES],
      usage_sources: [...USAGE_SOURCES],
      cost_sources: [...COST_SOURCES],
    });
  });
});

describe('GET /-/api/fleet without fleet: (test/console/fleet.test.ts has it with Postgres)', () => {
  it('is a 404 saying how to turn it on, still checks its parameters; status says fleet: false', async () => {
    const r = await getJson<{ error: string }>(world, '/-/api/fleet?by=host');
    expect(r.status).toBe(404);
    expect(r.body.error).toBe(
      'fleet.postgres is not configured: set fleet.postgres.url in the config file or TOKENMETER_PG_URL (docs/fleet.md)',
    );
    expect((await getJson(world, '/-/api/fleet?modle=x')).status).toBe(400);
    expect((await getJson<Json>(world, '/-/api/status')).body.fleet).toBe(false);
  });
});

describe('the admin surface', () => {
  it('sends the strict CSP and nosniff on every console answer, no-store on the API', async () => {
    for (const path of ['/-/api/status', '/-/ui/', '/-/ui/app.js', '/-/api/requests?since=bad', '/-/nope']) {
      const r = await call(world, path);
      expect(r.headers['content-security-policy']).toBe(CSP);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['referrer-policy']).toBe('no-referrer');
    }
    expect(CSP).toMatch(/^default-src 'self';/);
    expect((await call(world, '/-/api/status')).headers['cache-control']).toBe('no-store');
    const ui = await call(world, '/-/ui/');
    expect(ui.status).toBe(200);
    expect(ui.body.toString()).toContain('<script type="module" src="/-/ui/app.js">');
    const js = await call(world, '/-/ui/app.js');
    expect(js.headers['content-type']).toMatch(/javascript/);
  });

  it('redirects /-/ and /-/ui to /-/ui/', async () => {
    for (const path of ['/-/', '/-/ui']) {
      const r = await call(world, path);
      expect(r.status).toBe(302);
      expect(r.headers.location).toBe('/-/ui/');
    }
  });

  it('answers only GET/HEAD on the API (405 otherwise) and never proxies /-/', async () => {
    const before = world.gateway.requests.length;
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      // (node sends a DELETE body without a length: only methods that frame a body get one)
      const r = await call(world, '/-/api/requests', {
        method,
        body: method === 'DELETE' ? undefined : '{}',
      });
      expect(r.status).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
    }
    const head = await call(world, '/-/api/status', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect((await call(world, '/-/v1/chat/completions', { method: 'POST', body: '{}' })).status).toBe(405);
    expect((await call(world, '/-/v1/models')).status).toBe(404);
    expect(world.gateway.requests.length).toBe(before);
    // ... while /v1 still is proxied, and /healthz and /metrics still answer.
    const models = await call(world, '/v1/models', {
      headers: { authorization: 'Bearer sk-console-test-key' },
    });
    expect(models.status).toBe(200);
    expect(world.gateway.requests.length).toBe(before + 1);
    expect((await call(world, '/healthz')).status).toBe(200);
    expect((await call(world, '/metrics')).body.toString()).toContain('tokenmeter_requests_total');
  });

  it('without auth_token answers only Host names DNS rebinding cannot use', async () => {
    const evil = await call(world, '/-/api/status', { headers: { host: 'evil.example:4000' } });
    expect(evil.status).toBe(403);
    expect(JSON.parse(evil.body.toString()).error).toMatch(/DNS rebinding/);
    for (const host of [`localhost:${world.running.port}`, '127.0.0.1', '[::1]:4000']) {
      expect((await call(world, '/-/api/status', { headers: { host } })).status).toBe(200);
    }
  });
});

describe('auth_token: guessing is throttled', () => {
  let world: ConsoleWorld;
  beforeAll(async () => {
    world = await startConsoleWorld('auth_token: s3cret-console-token\n');
  });
  afterAll(async () => {
    await world?.stop();
  });

  it('after 5 wrong tokens from one address (form or bearer), 429 with Retry-After, even for the right one', async () => {
    const form = (token: string) =>
      call(world, '/-/login', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `token=${encodeURIComponent(token)}`,
      });
    const bearer = (token: string) =>
      call(world, '/-/api/status', { headers: { authorization: `Bearer ${token}` } });
    // No credential at all is not a guess: it never counts.
    for (let i = 0; i < 8; i++) expect((await call(world, '/-/api/status')).status).toBe(401);
    for (const t of ['a', 'b', 'c']) expect((await form(t)).status).toBe(401);
    for (const t of ['d', 'e']) expect((await bearer(t)).status).toBe(401);
    const locked = await form('f');
    expect(locked.status).toBe(429);
    expect(Number(locked.headers['retry-after'])).toBeGreaterThan(0);
    expect(Number(locked.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(locked.headers['set-cookie']).toBeUndefined();
    // The right token is refused too while the address is locked: otherwise the lock tells nothing.
    expect((await form('s3cret-console-token')).status).toBe(429);
    const api = await bearer('s3cret-console-token');
    expect(api.status).toBe(429);
    expect(JSON.parse(api.body.toString()).error).toMatch(/too many wrong tokens/);
  });
});

describe('auth_token', () => {
  let authed: ConsoleWorld;
  beforeAll(async () => {
    authed = await startConsoleWorld('auth_token: s3cret-console-token\n');
  });
  afterAll(async () => {
    await authed?.stop();
  });

  it('the API wants the bearer token (401 without, 200 with)', async () => {
    const none = await call(authed, '/-/api/status');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    expect((await call(authed, '/-/api/status', { headers: { authorization: 'Bearer wrong' } })).status).toBe(
      401,
    );
    const ok = await call(authed, '/-/api/status', {
      headers: { authorization: 'Bearer s3cret-console-token' },
    });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body.toString()).auth).toBe(true);
    // With a token, the Host check is off: the token is the protection.
    const named = await call(authed, '/-/api/status', {
      headers: { authorization: 'Bearer s3cret-console-token', host: 'tokenmeter.internal' },
    });
    expect(named.status).toBe(200);
  });

  it('a browser signs in with a form and gets an HttpOnly SameSite=Strict cookie that is not the token', async () => {
    const page = await call(authed, '/-/ui/');
    expect(page.status).toBe(401);
    expect(page.body.toString()).toContain('<form method="post" action="/-/login">');
    const form = (token: string) =>
      call(authed, '/-/login', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: `token=${encodeURIComponent(token)}`,
      });
    const wrong = await form('nope');
    expect(wrong.status).toBe(401);
    expect(wrong.headers['set-cookie']).toBeUndefined();
    expect(wrong.body.toString()).toContain('Wrong token.');
    const right = await form('s3cret-console-token');
    expect(right.status).toBe(303);
    expect(right.headers.location).toBe('/-/ui/');
    const cookie = right.headers['set-cookie']![0]!;
    expect(cookie).toMatch(/^tokenmeter_console=[0-9a-f]{64}; Path=\/-\/; HttpOnly; SameSite=Strict$/);
    expect(cookie).not.toContain('s3cret');
    const pair = cookie.split(';')[0]!;
    expect((await call(authed, '/-/ui/', { headers: { cookie: pair } })).status).toBe(200);
    expect((await call(authed, '/-/api/requests', { headers: { cookie: pair } })).status).toBe(200);
    expect(
      (await call(authed, '/-/api/requests', { headers: { cookie: 'tokenmeter_console=00' } })).status,
    ).toBe(401);
    // The static assets carry no data and are served to the login page without a session.
    expect((await call(authed, '/-/ui/console.css')).status).toBe(200);
    // /metrics keeps its own bearer rule.
    expect((await call(authed, '/metrics')).status).toBe(401);
  });
});

describe('switching the console off, and no audit log', () => {
  it('console: false in the config and --no-console answer 404 under /-/', async () => {
    for (const w of [
      await startConsoleWorld('console: false\n'),
      await startConsoleWorld('', { console: false }),
    ]) {
      try {
        const r = await call(w, '/-/ui/');
        expect(r.status).toBe(404);
        expect(JSON.parse(r.body.toString()).error).toBe('the console is not enabled');
        expect((await call(w, '/-/api/status')).status).toBe(404);
      } finally {
        await w.stop();
      }
    }
  });

  it('serve --help names --no-console', async () => {
    const help = await runCli(['serve', '--help'], { cwd: ROOT });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--no-console\s+disable the web console/);
  });

  it('with --no-db the requests are an empty list saying why; budgets and prices still answer', async () => {
    const w = await startConsoleWorld('', { db: false });
    try {
      const p = await getJson<Page>(w, '/-/api/requests');
      expect(p.body).toEqual({
        audit: false,
        audit_reason: 'the audit log is off (--no-db or db: false)',
        rows: [],
        next: null,
      });
      const prices = await getJson<{ prices: unknown[]; audit: boolean }>(w, '/-/api/prices');
      expect(prices.body.audit).toBe(false);
      expect(prices.body.prices).toHaveLength(3);
      expect((await getJson(w, '/-/api/budgets')).status).toBe(200);
      expect((await getJson(w, '/-/api/requests/01X')).status).toBe(404);
    } finally {
      await w.stop();
    }
  });
});
