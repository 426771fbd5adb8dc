/**
 * Audit-log benchmark (DESIGN.md §6, §11): how many records/s the queued writer sustains into a
 * temp-file DB, against a baseline in the same run — a plain prepared INSERT of the same rows in
 * one transaction, the ceiling for this machine and disk. Also reports the longest event-loop
 * stall while the writer was flushing, since better-sqlite3 writes on the main thread.
 * Bounded: at most RECORDS records or TIME_BUDGET_MS per phase.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { SILENT_LOGGER } from '../src/log.js';
import type { RequestRecord } from '../src/record.js';
import { openAuditLog, recordToRow } from '../src/sinks/audit/index.js';
import { REQUEST_COLUMN_NAMES, openDatabase, quoteIdent } from '../src/sinks/audit/migrations.js';
import { NOOP_HEALTH, type HealthCounters } from '../src/sinks/types.js';

const RECORDS = 100_000;
const TIME_BUDGET_MS = 10_000;
/** Writes between yields to the event loop, like records finishing between requests. */
const WRITES_PER_TICK = 200;

function makeRecord(i: number): RequestRecord {
  const ts = Date.now() - 1000 + (i % 1000);
  return {
    id: `01BENCH${String(i).padStart(19, '0')}`,
    ts_start: ts,
    ts_end: ts + 800,
    duration_ms: 800,
    ttft_ms: 120,
    upstream: 'cailag',
    method: 'POST',
    path: '/v1/chat/completions',
    operation: 'chat',
    request_model: i % 3 === 0 ? 'deepseek-chat' : 'gpt-4o-mini',
    response_model: 'deepseek-chat',
    app: `app-${i % 10}`,
    key_id: 'a1b2c3d4e5f6',
    user: null,
    stream: true,
    http_status: 200,
    error_type: null,
    error_message: null,
    finish_reason: 'stop',
    input_tokens: 400 + (i % 100),
    cache_read_tokens: 600,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: 500,
    reasoning_tokens: null,
    images: null,
    usage_source: 'reported',
    cost_nanos: 1_182_600 + i,
    currency: 'CNY',
    cost_source: 'computed',
    price_id: 'cailag/deepseek-chat',
    multiplier: '0.8',
    upstream_reported_cost_nanos: null,
    upstream_reported_currency: null,
    trace_id: '4bf92f3577b34da6a3ce929d0e0e4736',
    request_bytes: 2048,
    response_bytes: 8192,
    upstream_request_id: `req-${i}`,
    note: null,
  };
}

function baseline(path: string, records: RequestRecord[]): { perSecond: number; count: number } {
  const db = openDatabase(path);
  const insert = db.prepare(
    `INSERT INTO requests (${REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ')}) VALUES (${REQUEST_COLUMN_NAMES.map((c) => `@${c}`).join(', ')})`,
  );
  const start = performance.now();
  let count = 0;
  db.transaction(() => {
    for (const r of records) {
      insert.run(recordToRow(r));
      count++;
      if ((count & 1023) === 0 && performance.now() - start > TIME_BUDGET_MS) break;
    }
  })();
  const ms = performance.now() - start;
  db.close();
  return { perSecond: (count / ms) * 1000, count };
}

async function writer(
  path: string,
  records: RequestRecord[],
): Promise<{ perSecond: number; count: number; dropped: number; maxStallMs: number }> {
  let dropped = 0;
  const health: HealthCounters = { ...NOOP_HEALTH, auditDropped: (n) => (dropped += n) };
  const audit = openAuditLog({
    path,
    queueSize: 10_000,
    batchSize: 500,
    flushIntervalMs: 100,
    retentionDays: 0,
    captureBodies: false,
    captureMaxBytes: 0,
    redactPatterns: [],
    health,
    log: SILENT_LOGGER,
  });
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const start = performance.now();
  let count = 0;
  for (const r of records) {
    audit.write(r);
    count++;
    if (count % WRITES_PER_TICK === 0) {
      await new Promise((res) => setImmediate(res));
      if (performance.now() - start > TIME_BUDGET_MS) break;
    }
  }
  await audit.close();
  const ms = performance.now() - start;
  loop.disable();
  return { perSecond: (count / ms) * 1000, count, dropped, maxStallMs: loop.max / 1e6 };
}

export async function runAuditBench(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-bench-audit-'));
  try {
    const records = Array.from({ length: RECORDS }, (_, i) => makeRecord(i));
    const base = baseline(join(dir, 'baseline.db'), records);
    const queued = await writer(join(dir, 'writer.db'), records);
    return {
      audit_records: queued.count,
      audit_writer_records_per_s: Math.round(queued.perSecond),
      audit_baseline_records_per_s: Math.round(base.perSecond),
      audit_writer_to_baseline_ratio: Number((queued.perSecond / base.perSecond).toFixed(3)),
      audit_writer_dropped: queued.dropped,
      audit_writer_max_event_loop_stall_ms: Number(queued.maxStallMs.toFixed(2)),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(JSON.stringify(await runAuditBench(), null, 2) + '\n');
}
