/**
 * Audit-log benchmark (DESIGN.md §6, §11): how many records/s the queued writer sustains into a
 * temp-file DB, against a baseline in the same run — a plain prepared INSERT of the same rows in
 * one transaction, the ceiling for this machine and disk. Also reports the longest event-loop
 * stall while the writer was flushing, since better-sqlite3 writes on the main thread.
 *
 * Main-thread cost per record (issue 11): a 10k-record burst written with the writer on the main
 * thread (`writer: 'main'`) and on the writer thread (the default), in the same run: the event
 * loop's busy time per record and the longest event-loop stall, plus end-to-end records/s.
 * Bounded: at most RECORDS records or TIME_BUDGET_MS per phase.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { SILENT_LOGGER } from '../src/log.js';
import type { RequestRecord } from '../src/record.js';
import { auditTestHooks, openAuditLog, recordToRow } from '../src/sinks/audit/index.js';
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
    audio_tokens: null,
    images: null,
    usage_source: 'reported',
    cost_nanos: 1_182_600 + i,
    currency: 'CNY',
    cost_source: 'computed',
    price_id: 'cailag/deepseek-chat',
    price_match: 'exact',
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
    `INSERT INTO requests (${REQUEST_COLUMN_NAMES.map(quoteIdent).join(', ')}) VALUES (${REQUEST_COLUMN_NAMES.map(() => '?').join(', ')})`,
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
  // Written, not offered: with the writer thread the producer is not slowed down by the INSERTs,
  // so a producer faster than the writer fills the queue and the oldest rows are dropped.
  return { perSecond: ((count - dropped) / ms) * 1000, count, dropped, maxStallMs: loop.max / 1e6 };
}

const BATCH = 500;
const BURST_RECORDS = 10_000;

type WriterPlace = 'main' | 'thread';

/**
 * A 10k-record burst as the proxy would produce it (200 records per event-loop turn), then a flush
 * until every record is committed. Main-thread cost = the event loop's busy time over the burst
 * (`eventLoopUtilization().active`: everything that ran on this thread, write() and the INSERTs or
 * the postMessage) per record; the longest stall is what a request waiting on this loop would see.
 */
async function burst(
  path: string,
  records: RequestRecord[],
  writer: WriterPlace,
): Promise<{ mainUs: number; maxStallMs: number; perSecond: number; stored: number; dropped: number }> {
  let dropped = 0;
  const health: HealthCounters = { ...NOOP_HEALTH, auditDropped: (n) => (dropped += n) };
  const audit = openAuditLog({
    path,
    queueSize: 20_000,
    batchSize: BATCH,
    flushIntervalMs: 100,
    retentionDays: 0,
    captureBodies: false,
    captureMaxBytes: 0,
    redactPatterns: [],
    health,
    log: SILENT_LOGGER,
    writer,
  });
  await audit.flush(); // the thread is started and idle: its start-up is not part of the burst
  const where = auditTestHooks.writerWhere(audit);
  if (where !== writer) throw new Error(`asked for the writer on ${writer}, got ${where}`);
  const sample = records.slice(0, BURST_RECORDS);
  const loop = monitorEventLoopDelay({ resolution: 1 });
  loop.enable();
  const elu0 = performance.eventLoopUtilization();
  const start = performance.now();
  for (let i = 0; i < sample.length; i++) {
    audit.write(sample[i]!);
    if ((i + 1) % WRITES_PER_TICK === 0) await new Promise((res) => setImmediate(res));
  }
  await audit.flush();
  const ms = performance.now() - start;
  const elu = performance.eventLoopUtilization(elu0);
  loop.disable();
  const stored = Number(audit.db.prepare('SELECT COUNT(*) FROM requests').pluck().get());
  await audit.close();
  return {
    mainUs: (elu.active * 1000) / sample.length,
    maxStallMs: loop.max / 1e6,
    perSecond: (sample.length / ms) * 1000,
    stored,
    dropped,
  };
}

export async function runAuditBench(): Promise<Record<string, number>> {
  const dir = mkdtempSync(join(tmpdir(), 'tokenmeter-bench-audit-'));
  try {
    const records = Array.from({ length: RECORDS }, (_, i) => makeRecord(i));
    const base = baseline(join(dir, 'baseline.db'), records);
    const queued = await writer(join(dir, 'writer.db'), records);
    // Same run, both places, alternated so machine load hits both alike; 3 runs each (min-max).
    const runs: Record<WriterPlace, Awaited<ReturnType<typeof burst>>[]> = { main: [], thread: [] };
    for (let i = 0; i < 3; i++)
      for (const place of ['main', 'thread'] as const)
        runs[place].push(await burst(join(dir, `burst-${place}-${i}.db`), records, place));
    const range = (
      place: WriterPlace,
      name: string,
      f: (r: Awaited<ReturnType<typeof burst>>) => number,
    ): Record<string, number> => {
      const v = runs[place].map(f);
      const key = `audit_burst_${place}_${name}`;
      return {
        [`${key}_min`]: Number(Math.min(...v).toFixed(2)),
        [`${key}_max`]: Number(Math.max(...v).toFixed(2)),
      };
    };
    const out: Record<string, number> = {
      audit_records: queued.count,
      audit_writer_records_per_s: Math.round(queued.perSecond),
      audit_baseline_records_per_s: Math.round(base.perSecond),
      audit_writer_to_baseline_ratio: Number((queued.perSecond / base.perSecond).toFixed(3)),
      audit_writer_dropped: queued.dropped,
      audit_writer_max_event_loop_stall_ms: Number(queued.maxStallMs.toFixed(2)),
    };
    for (const place of ['main', 'thread'] as const) {
      Object.assign(
        out,
        range(place, 'main_thread_us_per_record', (r) => r.mainUs),
        range(place, 'max_stall_ms', (r) => r.maxStallMs),
        range(place, 'records_per_s', (r) => r.perSecond),
      );
      out[`audit_burst_${place}_stored`] = Math.min(...runs[place].map((r) => r.stored));
      out[`audit_burst_${place}_dropped`] = Math.max(...runs[place].map((r) => r.dropped));
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.stdout.write(JSON.stringify(await runAuditBench(), null, 2) + '\n');
}
