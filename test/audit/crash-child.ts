/**
 * A `serve`-like process for the unclean-shutdown test (hardening.test.ts): opens the audit log at
 * argv[2], writes and flushes `FLUSHED` records, queues `QUEUED` more without flushing (the ones a
 * SIGKILL loses), prints "ready" and waits to be killed. Never closes the sink.
 */
import { SILENT_LOGGER } from '../../src/log.js';
import { openAuditLog } from '../../src/sinks/audit/index.js';
import { NOOP_HEALTH } from '../../src/sinks/types.js';
import { fullRecord } from './records.js';

const FLUSHED = 3;
const QUEUED = 2;
const path = process.argv[2];
if (!path) throw new Error('usage: crash-child.ts <db path>');

const audit = openAuditLog({
  path,
  queueSize: 100,
  batchSize: 100,
  // Long interval: the queued records must still be in memory when the kill arrives. On this
  // thread: the writer thread's group commit sends rows within its linger, so on a slow machine the
  // "queued" rows were often written before the kill (CI failed with 5 rows instead of 3).
  flushIntervalMs: 60_000,
  writer: 'main',
  retentionDays: 0,
  captureBodies: false,
  captureMaxBytes: 0,
  redactPatterns: [],
  health: NOOP_HEALTH,
  log: SILENT_LOGGER,
});
const base = Date.UTC(2026, 10, 20, 10, 0, 0);
for (let i = 0; i < FLUSHED; i++)
  audit.write(fullRecord({ ts_start: base + i * 1000, ts_end: base + i * 1000 + 5 }));
await audit.flush();
for (let i = 0; i < QUEUED; i++)
  audit.write(fullRecord({ ts_start: base + 60_000 + i, ts_end: base + 60_005 + i }));
process.stdout.write(`ready ${process.pid}\n`);
// Bounded: the parent kills us long before this; if it never does, exit rather than linger.
setTimeout(() => process.exit(3), 20_000);
