/**
 * The fleet Postgres schema and the audit shipper against a real PostgreSQL (test/fleet/postgres.ts):
 * migrations, refusal of a newer schema, every row shipped exactly once and in order across a
 * restart and across a Postgres outage.
 */
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import type pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { markPathFor, readMark } from '../../src/fleet/mark.js';
import {
  migratePg,
  pgColumnsMissing,
  PG_SCHEMA_VERSION,
  readPgSchemaVersion,
} from '../../src/fleet/pg-schema.js';
import { startShipper, type Shipper } from '../../src/fleet/shipper.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { REQUEST_COLUMN_NAMES } from '../../src/sinks/audit/migrations.js';
import { tempDir, type TempDir } from '../audit/records.js';
import { fleetSettings, insertRecords, openAuditDb, recordedMetrics, records, waitFor } from './fixtures.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from './postgres.js';

describe('every record column reaches Postgres', () => {
  it('no RequestRecord column is left out of the Postgres migrations', () => {
    expect(pgColumnsMissing()).toEqual([]);
  });
});

describe.skipIf(skipWithoutPostgres())('fleet Postgres (real server)', () => {
  let server: PgServer;
  let client: pg.Client;
  let tmp: TempDir;
  let local: Database.Database;
  let dbPath: string;
  const shippers: Shipper[] = [];

  beforeAll(async () => {
    server = await startPostgres();
    client = await server.connect();
  }, 60_000);
  afterAll(async () => {
    await client?.end();
    await server?.stop();
  });
  beforeEach(async () => {
    await client.query(
      'DROP TABLE IF EXISTS requests, tokenmeter_schema, budget_ledger, budget_reservations, budget_settlements',
    );
    tmp = tempDir();
    dbPath = join(tmp.dir, 'audit.db');
    local = openAuditDb(dbPath);
  });
  afterEach(async () => {
    while (shippers.length) await shippers.pop()!.stop();
    local.close();
    tmp.cleanup();
    // A test that stopped the server must leave it running for the next.
    try {
      await client.query('SELECT 1');
    } catch {
      await server.startServer();
      client = await server.connect();
    }
  });

  const ship = (over: Parameters<typeof fleetSettings>[1] = {}) => {
    const metrics = recordedMetrics();
    const shipper = startShipper({
      dbPath,
      fleet: fleetSettings(server.url, over),
      metrics,
      log: SILENT_LOGGER,
      maxBackoffMs: 200,
    });
    shippers.push(shipper);
    return { shipper, metrics };
  };
  const pgIds = async (): Promise<string[]> =>
    (await client.query<{ id: string }>('SELECT id FROM requests ORDER BY id')).rows.map((r) => r.id);
  const localIdsInRowidOrder = (): string[] =>
    (local.prepare('SELECT id FROM requests ORDER BY rowid').all() as Array<{ id: string }>).map((r) => r.id);
  const pgCount = async (): Promise<number> =>
    Number((await client.query<{ n: string }>('SELECT count(*) AS n FROM requests')).rows[0]!.n);

  describe('schema migrations', () => {
    it('creates the schema on an empty database, with every record column, host and BIGINT money', async () => {
      expect(await migratePg(client)).toEqual({ from: 0, to: PG_SCHEMA_VERSION });
      const cols = await client.query<{ column_name: string; data_type: string }>(
        `SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'requests'`,
      );
      const types = Object.fromEntries(cols.rows.map((r) => [r.column_name, r.data_type]));
      expect(Object.keys(types).sort()).toEqual([...REQUEST_COLUMN_NAMES, 'host'].sort());
      expect(types.cost_nanos).toBe('bigint');
      expect(types.stream).toBe('boolean');
      expect(types.user).toBe('text');
    });

    it('upgrades from an older version and is idempotent', async () => {
      expect(await migratePg(client, 0)).toEqual({ from: 0, to: 0 });
      expect(await readPgSchemaVersion(client)).toBe(0);
      expect(await migratePg(client)).toEqual({ from: 0, to: PG_SCHEMA_VERSION });
      expect(await migratePg(client)).toEqual({ from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION });
      const versions = await client.query('SELECT version FROM tokenmeter_schema');
      expect(versions.rowCount).toBe(PG_SCHEMA_VERSION);
    });

    it('refuses a schema written by a newer tokenmeter, and the shipper does not start', async () => {
      await migratePg(client);
      await client.query('INSERT INTO tokenmeter_schema (version) VALUES ($1)', [PG_SCHEMA_VERSION + 1]);
      await expect(migratePg(client)).rejects.toMatchObject({
        code: 'DB_SCHEMA_TOO_NEW',
        message: expect.stringContaining(`schema version ${PG_SCHEMA_VERSION + 1}`),
      });
      insertRecords(local, records(3));
      const { shipper, metrics } = ship();
      await waitFor(() => shipper.state() === 'refused');
      expect(metrics.failures).toBe(1);
      expect(await pgCount()).toBe(0);
    });
  });

  describe('shipping', () => {
    it('ships every row exactly once, in rowid order, with exact values', async () => {
      const recs = records(30);
      insertRecords(local, recs);
      const { shipper, metrics } = ship();
      await waitFor(() => shipper.shipped() === 30 && metrics.lagValue === 0);
      expect(await pgIds()).toEqual([...localIdsInRowidOrder()].sort());
      expect(metrics.shippedTotal).toBe(30);
      // The mark is the last rowid, i.e. rows went in rowid order, not ts_start order.
      const last = local.prepare('SELECT rowid AS r, id FROM requests ORDER BY rowid DESC LIMIT 1').get() as {
        r: number;
        id: string;
      };
      expect(readMark(markPathFor(dbPath))).toEqual({ rowid: BigInt(last.r), id: last.id });
      const row = (await client.query('SELECT * FROM requests WHERE id = $1', [recs[29]!.id])).rows[0];
      expect(row.cost_nanos).toBe('30000000210'); // 1_000_000_007 * 30: past 2^31, exact
      expect(row.stream).toBe(true);
      expect(row.user).toBe('user-42');
      expect(row.audio_tokens).toBeNull();
      expect(row.host).toBe('test-host');
    });

    it('stopped mid-way and started again: no duplicates, no gaps', async () => {
      insertRecords(local, records(40));
      const metrics = recordedMetrics();
      const holder: { first?: Shipper } = {};
      // Stop right after the first batch commits: the rest must wait for the next shipper.
      const stopAfterOne = {
        ...metrics,
        shipped: (n: number) => (metrics.shipped(n), void holder.first?.stop()),
      };
      const first = startShipper({
        dbPath,
        fleet: fleetSettings(server.url),
        metrics: stopAfterOne,
        log: SILENT_LOGGER,
      });
      holder.first = first;
      shippers.push(first);
      await waitFor(() => first.state() === 'stopped');
      await first.stop();
      expect(await pgCount()).toBe(7);
      insertRecords(local, records(15, Date.UTC(2025, 0, 1)));
      const { shipper } = ship();
      await waitFor(async () => (await pgCount()) === 55);
      await waitFor(() => shipper.shipped() === 48);
      expect(await pgIds()).toEqual([...localIdsInRowidOrder()].sort());
    });

    it('a lost mark re-ships everything without duplicating a row', async () => {
      insertRecords(local, records(10));
      const a = ship();
      await waitFor(() => a.shipper.shipped() === 10);
      await a.shipper.stop();
      const { rmSync } = await import('node:fs');
      rmSync(markPathFor(dbPath));
      const b = ship();
      await waitFor(() => b.shipper.shipped() === 10);
      expect(await pgCount()).toBe(10);
    });

    it('Postgres down: failures counted, rows kept, then everything arrives exactly once', async () => {
      insertRecords(local, records(5));
      const { shipper, metrics } = ship();
      await waitFor(() => shipper.shipped() === 5);
      await client.end();
      await server.stopServer();
      insertRecords(local, records(20, Date.UTC(2024, 0, 1)));
      await waitFor(() => metrics.failures >= 2);
      expect(shipper.state()).toBe('backing-off');
      expect(metrics.lagValue).toBe(20);
      expect(local.prepare('SELECT count(*) AS n FROM requests').get()).toEqual({ n: 25 });
      await server.startServer();
      client = await server.connect();
      await waitFor(() => shipper.shipped() === 25 && metrics.lagValue === 0);
      expect(await pgIds()).toEqual([...localIdsInRowidOrder()].sort());
    });
  });
});
