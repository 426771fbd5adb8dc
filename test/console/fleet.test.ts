/**
 * The console's fleet view, `GET /-/api/fleet` (docs/console.md), against a real PostgreSQL
 * (test/fleet/postgres.ts) and a real `tokenmeter serve` in fleet mode: two hosts' audit logs are
 * shipped by the real shipper (test/fleet/fixtures.ts), then the answer's report must be
 * `tokenmeter report --fleet --format json` to the byte, with each host's shipping state beside it.
 * Postgres stopped: a 503 naming the server (password masked), and serve keeps proxying.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reportFleetCommand } from '../../src/cli/report.js';
import type { RequestRecord } from '../../src/record.js';
import { tempDir, type TempDir } from '../audit/records.js';
import { FLEET_WINDOW, shipHosts, waitFor } from '../fleet/fixtures.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from '../fleet/postgres.js';
import { launchChromium, skipWithoutChromium, watchedPage } from './chromium.js';
import { call, getJson, startConsoleWorld, type ConsoleWorld } from './world.js';

type Json = Record<string, unknown>;
interface HostRow {
  host: string;
  rows: number;
  newest_ts_start: number;
  newest: string;
  newest_age_ms: number;
}
interface ShipperJson {
  state: string;
  lag_rows: number | null;
  shipped: number;
  failures: number;
  last_success: string | null;
}
interface FleetAnswer {
  groups: Json[];
  totals: Json[];
  hosts: HostRow[];
  this_host: string;
  shipper: ShipperJson | null;
  postgres: string;
  /** Only on a 503 (Postgres down), beside this_host and shipper. */
  error?: string;
}

const HOSTS = ['host-a', 'host-b'] as const;
const WINDOW_QUERY = `since=${FLEET_WINDOW.since}&until=${FLEET_WINDOW.until}`;

describe.skipIf(skipWithoutPostgres())('GET /-/api/fleet (real server)', () => {
  let server: PgServer;
  let tmp: TempDir;
  let world: ConsoleWorld;
  let shipped: Record<string, { records: RequestRecord[] }>;

  beforeAll(async () => {
    server = await startPostgres();
    tmp = tempDir();
    shipped = await shipHosts(server.url, tmp.dir, HOSTS);
    world = await startConsoleWorld(
      `fleet:\n  host: console-host\n  postgres:\n    url: "${server.url}"\n    ship_interval: 50ms\n`,
    );
  }, 60_000);
  afterAll(async () => {
    await world?.stop();
    await server?.stop();
    tmp?.cleanup();
  });

  const fleet = (query: string) => getJson<FleetAnswer>(world, `/-/api/fleet?${query}`);
  /** The CLI's answer for the same window, as the object `--format json` prints. */
  const cli = async (by?: string) =>
    JSON.parse(
      await reportFleetCommand(
        { ...FLEET_WINDOW, by, format: 'json' },
        { TOKENMETER_PG_URL: server.url },
        tmp.dir,
      ),
    ) as Json;

  it('answers `tokenmeter report --fleet --format json` to the byte, per currency, beyond 2^53', async () => {
    for (const by of [undefined, 'host', 'host,app,model,day']) {
      const r = await fleet(`${WINDOW_QUERY}${by ? `&by=${by}` : ''}`);
      expect(r.status).toBe(200);
      const { hosts: _hosts, this_host: _me, shipper: _shipper, postgres: _pg, ...report } = r.body;
      expect(JSON.stringify(report)).toBe(JSON.stringify(await cli(by)));
    }
    const { totals } = (await fleet(WINDOW_QUERY)).body;
    expect(totals.map((t) => t.currency)).toEqual(['CNY', 'USD', null]);
    expect(BigInt(totals[0]!.cost_nanos as string) > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
  });

  it('by=host: one group per host and currency, each with that host’s requests', async () => {
    const { groups } = (await fleet(`${WINDOW_QUERY}&by=host`)).body;
    expect([...new Set(groups.map((g) => g.host))]).toEqual([...HOSTS]);
    for (const host of HOSTS) {
      const requests = groups.filter((g) => g.host === host).reduce((n, g) => n + (g.requests as number), 0);
      expect(requests).toBe(shipped[host]!.records.length);
    }
  });

  it('shows every host’s rows and newest record in Postgres, and this host’s own shipper', async () => {
    await waitFor(async () => (await fleet('')).body.shipper?.state === 'shipping');
    const r = await fleet('');
    expect(r.body.hosts).toEqual(
      HOSTS.map((host) => {
        const newest = Math.max(...shipped[host]!.records.map((x) => x.ts_start));
        return {
          host,
          rows: shipped[host]!.records.length,
          newest_ts_start: newest,
          newest: new Date(newest).toISOString(),
          newest_age_ms: expect.any(Number) as unknown as number,
        };
      }),
    );
    expect(r.body.this_host).toBe('console-host');
    expect(r.body.shipper).toMatchObject({ state: 'shipping', lag_rows: 0, failures: 0 });
    expect(r.body.shipper!.last_success).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(r.body.postgres).toBe(`postgres://tokenmeter:***@127.0.0.1:${server.port}/tokenmeter`);
    expect(JSON.stringify(r.body)).not.toContain(server.password);
    const status = await getJson<Json>(world, '/-/api/status');
    expect(status.body.fleet).toBe(true);
  });

  it.each([
    ['?modle=x', /unknown parameter "modle"/],
    ['?by=hots', /unknown dimension "hots"/],
    ['?since=yesterday', /since: expected 24h, 7d/],
    ['?since=1h&until=2h', /since must be before until/],
  ])('%s is a 400 saying what is expected', async (query, message) => {
    const r = await getJson<{ error: string }>(world, `/-/api/fleet${query}`);
    expect(r.status).toBe(400);
    expect(r.body.error).toMatch(message);
  });

  describe.skipIf(skipWithoutChromium('the fleet page in test/console/fleet.test.ts'))('in Chromium', () => {
    it('shows the Fleet tab, the totals, the per-host groups and shipping, as text, with no CSP error', async () => {
      const browser = await launchChromium();
      try {
        const { page, problems } = await watchedPage(browser);
        await page.goto(`${world.base}/-/ui/#/fleet?${WINDOW_QUERY}&by=host`);
        await page.waitForSelector('#fleet-hosts tbody tr');
        expect(await page.$eval('nav a.active', (a) => a.textContent)).toBe('Fleet');
        const api = (await fleet(`${WINDOW_QUERY}&by=host`)).body;
        const hosts = await page.$$eval('#fleet-hosts tbody tr', (trs) =>
          trs.map((t) => [...t.querySelectorAll('td')].slice(0, 2).map((td) => td.textContent)),
        );
        expect(hosts).toEqual(api.hosts.map((x) => [x.host, String(x.rows)]));
        // Two report tables: the totals per currency, then per host; the cells are the API's.
        const tables = await page.$$eval('table.totals', (ts) =>
          ts.map((t) => [...t.querySelectorAll('tbody td.cost')].map((td) => td.textContent)),
        );
        const costs = (rows: Json[]) => rows.map((x) => (x.cost === null ? '-' : String(x.cost)));
        expect(tables).toEqual([costs(api.totals), costs(api.groups)]);
        expect(await page.textContent('#shipper')).toContain('shipping');
        expect(problems).toEqual([]);
      } finally {
        await browser.close();
      }
    });
  });

  it('Postgres stopped: 503 naming the server (password masked), serve keeps proxying; back when it is', async () => {
    expect((await fleet('')).status).toBe(200); // a pooled connection now idles, to be cut below
    await server.stopServer();
    try {
      const down = await fleet('');
      expect(down.status).toBe(503);
      expect(down.headers['retry-after']).toBe('5');
      expect(down.body.error).toContain(
        `fleet Postgres at postgres://tokenmeter:***@127.0.0.1:${server.port}/tokenmeter`,
      );
      expect(JSON.stringify(down.body)).not.toContain(server.password);
      // This host's own shipper state is still shown: it is what an operator looks for now.
      expect(down.body.this_host).toBe('console-host');
      const proxied = await call(world, '/v1/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer sk-console-test-key' },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect(proxied.status).toBe(200);
      // Two fields a shipper tick sets at different moments (a tick with nothing to ship succeeds
      // without Postgres): wait for both together.
      await waitFor(async () => {
        const s = (await fleet('')).body.shipper;
        return s?.lag_rows === 1 && s.state === 'backing-off';
      });
      expect((await call(world, '/healthz')).status).toBe(200);
    } finally {
      await server.startServer();
    }
    await waitFor(async () => (await fleet('')).status === 200);
    await waitFor(async () => (await fleet('')).body.hosts.some((h) => h.host === 'console-host'));
  });
});
