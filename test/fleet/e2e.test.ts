/**
 * Fleet mode end to end (issue 14 "Done when"): a real throwaway PostgreSQL, real `tokenmeter serve`
 * child processes sharing it (fleet.postgres + fleet.host), the fake gateway upstream and the real
 * `openai` SDK as the client.
 *
 * (a) 150 concurrent requests over three sidecars against one shared block budget: each gets 200
 *     or 429 budget_exceeded; the fleet ledger's spent stays ≤ the limit (reserve admits only when
 *     spent + held + bound ≤ limit and settle replaces a bound by a cost ≤ bound) and equals the
 *     SQLite costs of the admitted requests (each settled once); Postgres `requests` holds every
 *     SQLite row of the three sidecars exactly once.
 * (b) Postgres stopped mid-traffic (data kept) and started again: every request answered, every
 *     record in SQLite, then every row shipped exactly once.
 * (c) A sidecar SIGKILLed with requests hanging upstream: its reservations stop counting after its
 *     fleet.reservation_ttl (1s), other sidecars can spend again, and its rows are gone from
 *     budget_reservations (deleted by the next reserve).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeWorld, readRows, startServe, startWorld, waitFor, writeFile } from '../e2e/helpers.js';
import type { E2eWorld, ServeProcess } from '../e2e/helpers.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from './postgres.js';

const API_KEY = 'sk-e2e-fleet-secret-key';
// USD per 1K tokens: an input token is 1e6 nanos, an output token 2e6.
const PRICES = 'currency: USD\nunit: 1K\nprices:\n  - { model: gpt-4o, input: 1, output: 2 }\n';
const CHAT = { model: 'gpt-4o', max_tokens: 3, messages: [{ role: 'user' as const, content: 'hi there' }] };
const BURST_LIMIT_NANOS = 500_000_000n;
const CRASH_LIMIT_NANOS = 200_000_000n;

interface Sidecar {
  name: string;
  dir: string;
  db: string;
  serve: ServeProcess;
}

function config(host: string, upstream: string, ttl: string): string {
  return `db: audit.db
presets: false
prices: [prices.yaml]
upstreams:
  - name: default
    url: ${upstream}/v1
fleet:
  host: ${host}
  reservation_ttl: ${ttl}
  budget_timeout: 1s
  postgres:
    url: "\${TOKENMETER_PG_URL}"
    ship_interval: 100ms
    batch_size: 50
budgets:
  - name: burst
    scope: { app: burst }
    period: day
    limit: "0.5"
    currency: USD
    action: block
  - name: outage
    scope: { app: outage }
    period: day
    limit: "1000"
    currency: USD
    action: block
    on_unreachable: local
  - name: crash
    scope: { app: crash }
    period: day
    limit: "0.2"
    currency: USD
    action: block
`;
}

function client(s: Sidecar, app: string): OpenAI {
  return new OpenAI({
    apiKey: API_KEY,
    baseURL: `${s.serve.base}/v1`,
    maxRetries: 0,
    timeout: 30_000,
    defaultHeaders: { 'x-tokenmeter-app': app },
  });
}

type Outcome = { status: 200 } | { status: number; code: string | null | undefined; message: string };

async function chat(s: Sidecar, app: string): Promise<Outcome> {
  try {
    await client(s, app).chat.completions.create(CHAT);
    return { status: 200 };
  } catch (err) {
    if (err instanceof OpenAI.APIError)
      return { status: err.status ?? 0, code: err.code, message: err.message };
    throw err;
  }
}

/** SQLite rows of one sidecar (read-only), optionally for one app. */
function sqliteRows(s: Sidecar, app?: string) {
  const rows = readRows(s.db);
  return app === undefined ? rows : rows.filter((r) => r.app === app);
}

describe.skipIf(skipWithoutPostgres())('fleet end to end (real Postgres, real serve children)', () => {
  let server: PgServer;
  let world: E2eWorld;
  let admin: pg.Client;
  const sidecars: Sidecar[] = [];

  async function sidecar(name: string, ttl: string): Promise<Sidecar> {
    const dir = join(world.tmp.dir, name);
    mkdirSync(dir);
    writeFile(dir, 'prices.yaml', PRICES);
    const cfg = writeFile(dir, 'tokenmeter.yaml', config(name, world.gateway.url, ttl));
    const serve = await startServe(['--config', cfg], { cwd: dir, env: { TOKENMETER_PG_URL: server.url } });
    const s = { name, dir, db: join(dir, 'audit.db'), serve };
    sidecars.push(s);
    return s;
  }

  /** A query on the test's own connection, reconnecting once after an outage broke it. */
  async function query<T extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
    try {
      return (await admin.query<T>(sql, params)).rows;
    } catch {
      await admin.end().catch(() => undefined);
      admin = await server.connect();
      return (await admin.query<T>(sql, params)).rows;
    }
  }

  /** Polls until Postgres `requests` holds exactly the SQLite rows of `hosts` (by id), then returns them. */
  async function shippedExactlyOnce(hosts: Sidecar[], timeoutMs = 20_000): Promise<void> {
    let local: string[] = [];
    let fleet: string[] = [];
    try {
      await waitFor(
        'the shippers to catch up',
        async () => {
          local = hosts.flatMap((h) => sqliteRows(h).map((r) => r.id)).sort();
          fleet = (await query<{ id: string }>('SELECT id FROM requests ORDER BY id')).map((r) => r.id);
          return fleet.length === local.length && fleet.every((id, i) => id === local[i]) ? true : undefined;
        },
        timeoutMs,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}: ${local.length} SQLite rows, ${fleet.length} fleet rows`);
    }
    // Ids are unique across hosts, so "every row exactly once" is: same id set, same count.
    expect(new Set(local).size).toBe(local.length);
    // Each row came from the host that recorded it.
    for (const h of hosts) {
      const ids = sqliteRows(h).map((r) => r.id);
      const n = await query<{ n: string }>(
        'SELECT count(*)::text AS n FROM requests WHERE host = $1 AND id = ANY($2)',
        [h.name, ids],
      );
      expect(Number(n[0]!.n)).toBe(ids.length);
    }
  }

  beforeAll(async () => {
    server = await startPostgres();
    world = await startWorld('tm-fleet-e2e-', {});
    admin = await server.connect();
    // web-1..3 carry the traffic; web-crash is the one SIGKILLed in (c), with a 1 s reservation_ttl.
    await Promise.all([
      sidecar('web-1', '30s'),
      sidecar('web-2', '30s'),
      sidecar('web-3', '30s'),
      sidecar('web-crash', '1s'),
    ]);
  }, 60_000);

  afterAll(async () => {
    await admin?.end().catch(() => undefined);
    for (const s of sidecars) await s.serve.stop();
    await closeWorld(world);
    await server?.stop();
  });

  const web = () => sidecars.filter((s) => s.name !== 'web-crash').sort((a, b) => (a.name < b.name ? -1 : 1));

  it('(a) 150 concurrent requests over three sidecars: 200 or 429, spent ≤ limit, every row shipped once', async () => {
    const hosts = web();
    const outcomes = await Promise.all(Array.from({ length: 150 }, (_v, i) => chat(hosts[i % 3]!, 'burst')));
    const ok = outcomes.filter((o) => o.status === 200).length;
    const refused = outcomes.filter((o) => o.status !== 200);
    for (const r of refused) expect(r).toMatchObject({ status: 429, code: 'budget_exceeded' });
    expect(ok).toBeGreaterThan(0);
    expect(refused.length).toBeGreaterThan(0);

    // Every request recorded (admitted and refused), then every settle done.
    const recorded = await waitFor('the burst records', () => {
      const rows = hosts.flatMap((h) => sqliteRows(h, 'burst'));
      return rows.length >= 150 ? rows : undefined;
    });
    expect(recorded).toHaveLength(150);
    await waitFor('the burst settles', async () => {
      const held = await query<{ n: string }>(
        "SELECT count(*)::text AS n FROM budget_reservations WHERE budget = 'burst'",
      );
      return held[0]!.n === '0' ? true : undefined;
    });
    const ledger = await query<{ spent: string }>(
      "SELECT spent_nanos::text AS spent FROM budget_ledger WHERE budget = 'burst'",
    );
    expect(ledger).toHaveLength(1);
    const spent = BigInt(ledger[0]!.spent);
    // The gate's guarantee: reserve admits only when spent + held + bound ≤ limit, and a settle
    // replaces the bound by the real cost (≤ bound), so the fleet never passes the limit.
    expect(spent).toBeLessThanOrEqual(BURST_LIMIT_NANOS);
    // Each admitted request settled exactly once: the ledger is the sum of the SQLite costs.
    const sqliteSpent = recorded.reduce((sum, r) => sum + BigInt(r.cost_nanos ?? 0), 0n);
    expect(spent).toBe(sqliteSpent);
    expect(recorded.filter((r) => r.http_status === 200)).toHaveLength(ok);

    await shippedExactlyOnce(sidecars);
  }, 40_000);

  it('(b) Postgres stopped mid-traffic: every request answered and recorded, then shipped exactly once', async () => {
    const hosts = web();
    let stop = false;
    const sent = new Map<string, number>(hosts.map((h) => [h.name, 0]));
    const bad: Outcome[] = [];
    // One sequential client loop per sidecar, running across the outage.
    const loops = hosts.map(async (h) => {
      while (!stop) {
        const o = await chat(h, 'outage');
        sent.set(h.name, sent.get(h.name)! + 1);
        if (o.status !== 200) bad.push(o);
      }
    });
    const total = () => [...sent.values()].reduce((a, b) => a + b, 0);
    try {
      await waitFor('traffic before the outage', () => (total() >= 15 ? true : undefined));
      await server.stopServer();
      const atStop = total();
      try {
        await waitFor('traffic during the outage', () => (total() >= atStop + 30 ? true : undefined), 20_000);
      } finally {
        await server.startServer();
      }
      const atStart = total();
      await waitFor('traffic after the outage', () => (total() >= atStart + 15 ? true : undefined));
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    // on_unreachable: local keeps every app's traffic flowing.
    const why = hosts.map(
      (h) => `${h.name} exit=${h.serve.child.exitCode}: ${h.serve.stderr().slice(-2000)}`,
    );
    expect(bad, why.join('\n')).toEqual([]);
    for (const h of hosts) {
      const n = sent.get(h.name)!;
      await waitFor(`${h.name}'s outage records`, () =>
        sqliteRows(h, 'outage').length >= n ? true : undefined,
      );
      expect(sqliteRows(h, 'outage')).toHaveLength(n);
    }
    // The shipper's backoff after the outage is short here (ship_interval 100ms, doubling).
    await shippedExactlyOnce(sidecars, 30_000);
  }, 60_000);

  it("(c) a SIGKILLed sidecar's reservations expire after its reservation_ttl; the others spend again", async () => {
    const crash = sidecars.find((s) => s.name === 'web-crash')!;
    const other = web()[0]!;
    // Requests that hang upstream hold their reservations; add them until the budget is full.
    const hanging: Array<Promise<unknown>> = [];
    const hung = new OpenAI({
      apiKey: API_KEY,
      baseURL: `${crash.serve.base}/v1`,
      maxRetries: 0,
      timeout: 30_000,
      defaultHeaders: { 'x-tokenmeter-app': 'crash', 'x-fake-scenario': 'hang' },
    });
    const held = async () =>
      Number(
        (
          await query<{ n: string }>(
            "SELECT count(*)::text AS n FROM budget_reservations WHERE budget = 'crash' AND host = 'web-crash'",
          )
        )[0]!.n,
      );
    let full = false;
    for (let i = 0; i < 10 && !full; i++) {
      const before = await held();
      let refused = false;
      hanging.push(
        hung.chat.completions.create(CHAT).then(
          () => undefined,
          (err: unknown) => {
            if (err instanceof OpenAI.APIError && err.status === 429) refused = true;
          },
        ),
      );
      await waitFor('a hanging request to reserve or be refused', async () =>
        refused || (await held()) > before ? true : undefined,
      );
      full = refused;
    }
    expect(full).toBe(true);
    // The crashed host's holds leave no room for one more bound (each request has the same bound).
    const holds = await query<{ n: string; sum: string; bound: string }>(
      `SELECT count(*)::text AS n, sum(amount_nanos)::text AS sum, max(amount_nanos)::text AS bound
       FROM budget_reservations WHERE budget = 'crash' AND host = 'web-crash'`,
    );
    expect(Number(holds[0]!.n)).toBeGreaterThan(0);
    expect(BigInt(holds[0]!.sum) + BigInt(holds[0]!.bound)).toBeGreaterThan(CRASH_LIMIT_NANOS);
    // The fleet is full: another sidecar, whose own view is empty, is refused by the fleet's books.
    const refusedElsewhere = await chat(other, 'crash');
    expect(refusedElsewhere).toMatchObject({ status: 429, code: 'budget_exceeded' });
    expect((refusedElsewhere as { message: string }).message).toMatch(/shared by the fleet/);

    crash.serve.child.kill('SIGKILL');
    await crash.serve.exited;
    await Promise.all(hanging); // the connections drop with the process

    // After the 1 s ttl the crashed host's holds stop counting: the other sidecar is admitted, and
    // that reserve deleted the expired rows.
    const started = Date.now();
    await waitFor(
      'another sidecar to be admitted again',
      async () => ((await chat(other, 'crash')).status === 200 ? true : undefined),
      10_000,
    );
    // Once the last of them expired, the next reserve deletes them all: none is left for that host.
    await waitFor("the crashed host's reservations to expire", async () => {
      const r = await query<{ expired: boolean }>(
        "SELECT coalesce(bool_and(expires_at <= now()), true) AS expired FROM budget_reservations WHERE host = 'web-crash'",
      );
      return r[0]!.expired ? true : undefined;
    });
    expect(await chat(other, 'crash')).toEqual({ status: 200 });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(await held()).toBe(0);
    const left = await query<{ n: string }>(
      "SELECT count(*)::text AS n FROM budget_reservations WHERE host = 'web-crash'",
    );
    expect(left[0]!.n).toBe('0');
  }, 40_000);
});
