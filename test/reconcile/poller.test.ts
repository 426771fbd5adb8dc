/**
 * The billing poller (issue 13) against the fake gateway: snapshots stored with the key's
 * fingerprint, the billed counter incremented by what the gateway charged between polls (top-ups
 * excluded), the drift gauge from billed / metered, one warning per failing spell.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { keyFingerprint } from '../../src/attribution.js';
import type { BillingSettings, UpstreamSettings } from '../../src/config/types.js';
import type { Logger } from '../../src/log.js';
import { startBillingPoller, type BillingPoller } from '../../src/reconcile/poller.js';
import { billingSnapshotSql, type BillingSnapshotRow } from '../../src/sinks/audit/billing.js';
import { openWriterConnection, type WriterConnection } from '../../src/sinks/audit/connection.js';
import { recordToRow } from '../../src/sinks/audit/row.js';
import { startFakeGateway, type FakeGateway } from '../fake-gateway/index.js';
import { fullRecord } from '../audit/records.js';

const KEY = 'sk-poller-key';
const SECRET = 'poller-test-secret-0123456789';
const KEY_ID = keyFingerprint(SECRET, KEY);

let gw: FakeGateway;
beforeAll(async () => {
  gw = await startFakeGateway();
});
afterAll(() => gw.close());

let conn: WriterConnection;
let poller: BillingPoller | undefined;
beforeEach(() => {
  conn = openWriterConnection(':memory:', 50);
});
afterEach(() => {
  poller?.stop();
  conn.close();
});

function upstream(billing: Partial<BillingSettings>, url = `${gw.url}/v1`): UpstreamSettings {
  return {
    name: 'dieyu',
    url: new URL(url),
    headers: {},
    connectTimeoutMs: 1000,
    idleTimeoutMs: 1000,
    injectUsage: true,
    trustReportedCost: false,
    billing: [
      {
        source: 'balance',
        intervalMs: 3_600_000,
        apiKey: KEY,
        quotaPerUnit: 500_000,
        windowMs: 3_600_000,
        ...billing,
      },
    ],
  };
}

function recorder() {
  const billed: Array<[string, string, bigint]> = [];
  const drift: Array<[string, string, number | null]> = [];
  const balance: Array<[string, string, number]> = [];
  const warnings: string[] = [];
  const metrics = {
    billed: (u: string, c: string, n: bigint) => void billed.push([u, c, n]),
    reconcileDrift: (u: string, c: string, r: number | null) => void drift.push([u, c, r]),
    balance: (u: string, c: string, a: number) => void balance.push([u, c, a]),
  };
  const log = {
    warn: (msg: string) => void warnings.push(msg),
    info: () => undefined,
  } as unknown as Logger;
  const audit = {
    get db() {
      return conn.db;
    },
    writeBillingSnapshot: (row: BillingSnapshotRow) => {
      conn.db.exec(billingSnapshotSql(row));
      return Promise.resolve();
    },
    flush: () => Promise.resolve(),
  };
  return { billed, drift, balance, warnings, metrics, log, audit };
}

describe('billing poller', () => {
  it('stores snapshots, counts what was billed between polls, sets the drift gauge', async () => {
    const r = recorder();
    poller = startBillingPoller({
      upstreams: [upstream({})],
      metrics: r.metrics,
      audit: r.audit,
      keySecret: SECRET,
      log: r.log,
    });
    await poller.pollNow();
    await new Promise((r) => setTimeout(r, 5));
    // Metered: one request of this key at 0.36 CNY, ended after that poll; the gateway billed it ×1.25.
    conn.insertRow(
      recordToRow(
        fullRecord({
          upstream: 'dieyu',
          key_id: KEY_ID,
          ts_start: Date.now() - 2,
          ts_end: Date.now() - 1,
          cost_nanos: 360_000_000,
          currency: 'CNY',
        }),
      ),
    );
    gw.billing.charge(KEY, 'req-1', { prompt: 100_000, completion: 20_000 }, { multiplier: '1.25' });
    await poller.pollNow();

    const rows = conn.db
      .prepare('SELECT key_id, source, currency, daily_used_nanos FROM billing_snapshots ORDER BY id')
      .safeIntegers()
      .all();
    expect(rows.length).toBeGreaterThanOrEqual(2);
    expect(rows.at(-1)).toEqual({
      key_id: KEY_ID,
      source: 'balance',
      currency: 'CNY',
      daily_used_nanos: 3_700_000_000n,
    });
    expect(r.billed.reduce((s, [, , n]) => s + n, 0n)).toBe(450_000_000n);
    expect(r.billed.every(([u, c]) => u === 'dieyu' && c === 'CNY')).toBe(true);
    expect(r.drift.at(-1)).toEqual(['dieyu', 'CNY', 1.25]);
    expect(r.balance.at(-1)![2]).toBeCloseTo(138.05, 9);
    expect(r.warnings).toEqual([]);
  });

  it('balance deltas: a top-up is not billed', async () => {
    const r = recorder();
    poller = startBillingPoller({
      upstreams: [upstream({ source: 'balance_delta' })],
      metrics: r.metrics,
      audit: r.audit,
      keySecret: SECRET,
      log: r.log,
    });
    await poller.pollNow();
    gw.billing.topUp('100');
    await poller.pollNow();
    gw.billing.charge(KEY, 'req-2', { prompt: 1_000_000, completion: 0 }); // 2 CNY
    await poller.pollNow();
    expect(r.billed.reduce((s, [, , n]) => s + n, 0n)).toBe(2_000_000_000n);
    // Billed while nothing went through tokenmeter: +Inf, so the drift alert fires.
    expect(r.drift.at(-1)).toEqual(['dieyu', 'CNY', Infinity]);
  });

  it('a failing endpoint is logged once per failing spell, and never throws', async () => {
    const r = recorder();
    poller = startBillingPoller({
      upstreams: [upstream({ apiKey: 'sk-bad-key' })],
      metrics: r.metrics,
      audit: r.audit,
      keySecret: SECRET,
      log: r.log,
    });
    await poller.pollNow();
    await poller.pollNow();
    expect(r.warnings).toEqual(['billing poll failed; will retry at the next interval']);
    expect(r.billed).toEqual([]);
  });
});
