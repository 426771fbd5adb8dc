/**
 * `tokenmeter report --fleet` and fleet retention against a real PostgreSQL (test/fleet/postgres.ts):
 * two hosts' audit logs shipped by the real shipper; the fleet totals equal the sum of both local
 * reports per currency, exact to the nano, beyond 2^53; `--by host`; clear errors; bounded prune.
 */
import { join } from 'node:path';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reportCommand, reportFleetCommand } from '../../src/cli/report.js';
import { pruneFleetCommand } from '../../src/cli/db.js';
import { startShipper } from '../../src/fleet/shipper.js';
import { pruneFleetBefore } from '../../src/fleet/queries.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { fullRecord, tempDir, type TempDir } from '../audit/records.js';
import {
  FLEET_DAY,
  FLEET_WINDOW,
  fleetSettings,
  insertRecords,
  openAuditDb,
  recordedMetrics,
  shipHosts,
  waitFor,
} from './fixtures.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from './postgres.js';

const DAY = FLEET_DAY;
const NOW = DAY + 86_400_000;
const WINDOW = FLEET_WINDOW;

interface JsonTotal {
  currency: string | null;
  requests: number;
  cost_nanos: string | null;
  tokens: Record<string, number | string | null>;
  estimated: number;
  unpriced: number;
}
const json = (text: string) =>
  JSON.parse(text) as { totals: JsonTotal[]; groups: Array<Record<string, unknown>> };

describe.skipIf(skipWithoutPostgres())('report --fleet and fleet retention (real server)', () => {
  let server: PgServer;
  let client: pg.Client;
  let tmp: TempDir;
  const hosts = ['host-a', 'host-b'] as const;
  const dbPaths: Record<string, string> = {};
  const env = (): NodeJS.ProcessEnv => ({ TOKENMETER_PG_URL: server.url });

  beforeAll(async () => {
    server = await startPostgres();
    client = await server.connect();
    tmp = tempDir();
    const fleet = await shipHosts(server.url, tmp.dir, hosts);
    for (const host of hosts) dbPaths[host] = fleet[host]!.dbPath;
  }, 60_000);
  afterAll(async () => {
    await client?.end();
    await server?.stop();
    tmp?.cleanup();
  });

  const local = (host: string) =>
    json(reportCommand({ db: dbPaths[host], ...WINDOW, format: 'json' }, {}, tmp.dir, NOW));

  it('fleet totals equal the sum of every host report, per currency, exact to the nano', async () => {
    const fleet = json(await reportFleetCommand({ ...WINDOW, format: 'json' }, env(), tmp.dir, NOW));
    const expected = new Map<
      string | null,
      { requests: number; nanos: bigint | null; unpriced: number; estimated: number; output: bigint }
    >();
    for (const host of hosts) {
      for (const t of local(host).totals) {
        const e = expected.get(t.currency) ?? {
          requests: 0,
          nanos: null,
          unpriced: 0,
          estimated: 0,
          output: 0n,
        };
        e.requests += t.requests;
        if (t.cost_nanos !== null) e.nanos = (e.nanos ?? 0n) + BigInt(t.cost_nanos);
        e.unpriced += t.unpriced;
        e.estimated += t.estimated;
        e.output += BigInt(t.tokens['output']!);
        expected.set(t.currency, e);
      }
    }
    expect(fleet.totals.map((t) => t.currency)).toEqual(['CNY', 'USD', null]);
    for (const t of fleet.totals) {
      const e = expected.get(t.currency)!;
      expect(t.requests).toBe(e.requests);
      expect(t.cost_nanos).toBe(e.nanos === null ? null : e.nanos.toString());
      expect(t.unpriced).toBe(e.unpriced);
      expect(t.estimated).toBe(e.estimated);
      expect(BigInt(t.tokens['output']!)).toBe(e.output);
    }
    // Past 2^53: a float sum could not have produced this string.
    expect(BigInt(fleet.totals[0]!.cost_nanos!) > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
  });

  it('--by host,app,model,day: one group per host, and each host equals its local report', async () => {
    const fleet = json(
      await reportFleetCommand({ ...WINDOW, by: 'host,app,model,day', format: 'json' }, env(), tmp.dir, NOW),
    );
    for (const host of hosts) {
      const localGroups = json(
        reportCommand(
          { db: dbPaths[host], ...WINDOW, by: 'app,model,day', format: 'json' },
          {},
          tmp.dir,
          NOW,
        ),
      ).groups;
      const fleetGroups = fleet.groups
        .filter((g) => g['host'] === host)
        .map(({ host: _host, ...rest }) => rest);
      expect(fleetGroups).toEqual(localGroups);
    }
    const byHost = json(
      await reportFleetCommand({ ...WINDOW, by: 'host', format: 'json' }, env(), tmp.dir, NOW),
    );
    expect([...new Set(byHost.groups.map((g) => g['host']))]).toEqual(['host-a', 'host-b']);
  });

  it('the table and csv formats are the local ones, with host as a column', async () => {
    const table = await reportFleetCommand({ ...WINDOW, by: 'host' }, env(), tmp.dir, NOW);
    expect(table).toMatch(/^host\s+currency\s+requests\s+cost/m);
    expect(table).toContain('of 60 requests:');
    const csv = await reportFleetCommand({ ...WINDOW, by: 'host', format: 'csv' }, env(), tmp.dir, NOW);
    expect(csv.split('\n')[0]).toBe(
      'row,host,currency,requests,cost,cost_nanos,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,reasoning_tokens,estimated,missing,unpriced,errors',
    );
  });

  it('--by host without --fleet is a usage error that says so', () => {
    expect(() => reportCommand({ db: dbPaths['host-a'], by: 'host' }, {}, tmp.dir, NOW)).toThrow(
      /needs --fleet/,
    );
  });

  it('a clear error when fleet.postgres is not configured', async () => {
    await expect(reportFleetCommand({}, {}, tmp.dir, NOW)).rejects.toThrow(
      /fleet\.postgres is not configured: set fleet\.postgres\.url .* or TOKENMETER_PG_URL/,
    );
  });

  it('a clear error, password masked, when Postgres is unreachable or refuses the password', async () => {
    const down = server.url.replace(`:${server.port}/`, ':1/');
    const err1 = await reportFleetCommand({}, { TOKENMETER_PG_URL: down }, tmp.dir, NOW).catch(
      (e: Error) => e,
    );
    expect(String(err1)).toMatch(
      /cannot reach the fleet Postgres at postgres:\/\/tokenmeter:\*\*\*@127\.0\.0\.1:1\//,
    );
    expect(String(err1)).not.toContain(server.password);
    const wrong = server.url.replace(server.password, `${server.password}x`);
    const err2 = await reportFleetCommand({}, { TOKENMETER_PG_URL: wrong }, tmp.dir, NOW).catch(
      (e: Error) => e,
    );
    expect(String(err2)).toMatch(/cannot reach the fleet Postgres/);
    expect(String(err2)).not.toContain(server.password);
  });

  it('pruneFleetBefore deletes only older rows, in bounded batches; db prune --fleet does it from the CLI', async () => {
    await client.query('CREATE TABLE requests_backup AS SELECT * FROM requests');
    try {
      const cutoff = DAY - 86_400_000 + 10 * 3_600_000;
      const before = await client.query<{ n: string }>(
        'SELECT count(*) AS n FROM requests WHERE ts_start < $1',
        [cutoff],
      );
      const deleted = await pruneFleetBefore(client, cutoff, 3);
      expect(deleted).toBe(Number(before.rows[0]!.n));
      expect(deleted).toBeGreaterThan(3);
      const left = await client.query<{ n: string }>(
        'SELECT count(*) AS n FROM requests WHERE ts_start < $1',
        [cutoff],
      );
      expect(left.rows[0]!.n).toBe('0');
      // `db prune --fleet --older-than`: everything here is older than 1 day before NOW + 2d.
      const out = await pruneFleetCommand(
        { olderThan: '1d', fleet: true },
        env(),
        tmp.dir,
        NOW + 2 * 86_400_000,
      );
      expect(out).toMatch(/^pruned \d+ fleet rows older than 1d/);
      expect((await client.query<{ n: string }>('SELECT count(*) AS n FROM requests')).rows[0]!.n).toBe('0');
    } finally {
      await client.query('INSERT INTO requests SELECT * FROM requests_backup ON CONFLICT (id) DO NOTHING');
      await client.query('DROP TABLE requests_backup');
    }
  });

  it('the shipper applies retention_days to the fleet Postgres on its timer', async () => {
    await client.query('CREATE TABLE requests_backup AS SELECT * FROM requests');
    try {
      const dbPath = join(tmp.dir, 'host-c.db');
      const db = openAuditDb(dbPath);
      const fresh = fullRecord({ ts_start: Date.now() - 60_000, ts_end: Date.now() - 59_000 });
      insertRecords(db, [fresh]);
      db.close();
      const shipper = startShipper({
        dbPath,
        fleet: { ...fleetSettings(server.url), host: 'host-c' },
        metrics: recordedMetrics(),
        log: SILENT_LOGGER,
        retentionDays: 5,
        retentionIntervalMs: 50,
      });
      try {
        // Every host-a/host-b row is from 2026-11-19/20, older than 5 days before the real clock.
        const count = async () =>
          (await client.query<{ n: string }>('SELECT count(*) AS n FROM requests')).rows[0]!.n;
        await waitFor(async () => (await count()) === '1');
        const left = await client.query<{ id: string; host: string }>('SELECT id, host FROM requests');
        expect(left.rows).toEqual([{ id: fresh.id, host: 'host-c' }]);
      } finally {
        await shipper.stop();
      }
    } finally {
      await client.query('DELETE FROM requests');
      await client.query('INSERT INTO requests SELECT * FROM requests_backup');
      await client.query('DROP TABLE requests_backup');
    }
  });
});
