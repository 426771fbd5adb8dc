/**
 * `tokenmeter reprice` on Realtime session rows: their audio part is the `audio_tokens` column; a
 * text-only session (audio 0) is repriced exactly, a session with audio (or without a stated split,
 * audio NULL) stays unpriced.
 */
import { writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { repriceCommand } from '../../src/cli/reprice.js';
import { openWriterConnection } from '../../src/sinks/audit/connection.js';
import { DAY_MS, openDatabase } from '../../src/sinks/audit/migrations.js';
import { recordToRow } from '../../src/sinks/audit/row.js';
import type { RequestRecord } from '../../src/record.js';
import { fullRecord, tempDir, type TempDir } from './records.js';

const NOW = Date.UTC(2026, 10, 30);
const PRICES = `currency: USD
prices:
  - { model: gpt-realtime, input: 4, cache_read: 0.4, output: 16 }
`;

let tmp: TempDir;
let db: string;
let prices: string;

const session = (id: string, audio: number | null): RequestRecord =>
  fullRecord({
    id,
    ts_start: NOW - DAY_MS,
    upstream: 'default',
    operation: 'realtime',
    method: 'GET',
    path: '/v1/realtime',
    http_status: 101,
    request_model: 'gpt-realtime',
    usage_source: 'reported',
    input_tokens: 220,
    cache_read_tokens: 80,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: 120,
    reasoning_tokens: null,
    audio_tokens: audio,
    images: null,
    cost_nanos: null,
    currency: null,
    cost_source: 'unpriced',
    price_id: null,
    price_match: null,
    multiplier: null,
    note: 'realtime_responses:1',
  });

beforeEach(() => {
  tmp = tempDir();
  db = tmp.file('audit.db');
  prices = tmp.file('p.yaml');
  writeFileSync(prices, PRICES);
});
afterEach(() => tmp.cleanup());

describe('reprice: realtime sessions', () => {
  it('reads the audio part from audio_tokens; only a text-only session gets a cost', () => {
    const w = openWriterConnection(db, 1000);
    w.insertBatch(
      [session('text', 0), session('audio', 100), session('nosplit', null)].map((r) => recordToRow(r)),
    );
    w.close();
    repriceCommand({ db, prices: [prices], presets: false, since: '30d' }, {}, tmp.dir, NOW);
    const d = openDatabase(db);
    const rows = d.prepare('SELECT id, cost_nanos, cost_source FROM requests ORDER BY id').all();
    d.close();
    // 220 × 4 + 80 × 0.4 + 120 × 16 = 2832 per 1M → 2,832,000 nanos
    expect(rows).toStrictEqual([
      { id: 'audio', cost_nanos: null, cost_source: 'unpriced' },
      { id: 'nosplit', cost_nanos: null, cost_source: 'unpriced' },
      { id: 'text', cost_nanos: 2_832_000, cost_source: 'computed' },
    ]);
  });
});
