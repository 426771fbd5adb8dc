/**
 * Reading a one-api / new-api usage log (issue 13, docs/reconcile.md "Importing a gateway's usage
 * log"): the JSON the gateways' log APIs answer, or a CSV with a documented header, into typed rows.
 *
 * Shapes accepted (what we relied on):
 * - new-api `GET /api/log/` and `/api/log/self`: `{success, message, data: {items: [...], total, page,
 *   page_size}}`, items with `created_at` (unix seconds), `type`, `model_name`, `prompt_tokens`,
 *   `completion_tokens`, `quota`, `token_name`, `use_time` (seconds), `is_stream`, `other` (a JSON
 *   string: model_ratio, group_ratio, completion_ratio, cache_tokens, cache_creation_tokens …)
 *   (QuantumNous/new-api-docs docs/en/api/fei-log.md).
 * - one-api `GET /api/log/self` and `/api/log/`: `{success, message, data: [...]}` with the same item
 *   fields minus new-api's extras (songquanpeng/one-api model/log.go `Log`); some forks page as
 *   `{data: {data: [...]}}`, accepted too. A bare array of items is accepted.
 * - Log types (one-api model/log.go, new-api docs): 1 top-up, 2 consumption, 3 manage, 4 system
 *   (one-api) / error (new-api), 5 system (new-api). Only type 2 is a billed request; a row without
 *   any `type` (a CSV without the column) is taken as consumption, which the docs state.
 *
 * Never a silent guess: a row that cannot be read becomes a `problems` entry naming the file, the
 * CSV line or JSON path, and the field; the file as a whole being unreadable or of the wrong shape
 * throws a {@link ConfigError} (exit 2, like a bad command-line argument) naming the same.
 */
import { readFileSync } from 'node:fs';
import { ConfigError, type SourceProblem } from '../errors.js';

export type LogFormat = 'json' | 'csv';

/** one-api / new-api `type` 2: a billed request (LogTypeConsume). */
export const CONSUME_TYPE = 2;

/** What the known log types mean, for the "skipped" listing. */
export const LOG_TYPE_LABELS: Readonly<Record<number, string>> = {
  0: 'unknown',
  1: 'top-up',
  3: 'manage',
  4: 'system (one-api) / error (new-api)',
  5: 'system (new-api)',
};

/** Where a row came from: `logs.csv:7` or `logs.json data.items[3]`. */
export interface RowSource {
  /** Human text naming file and CSV line or JSON path. */
  where: string;
  /** CSV: the 1-based line the record starts on. */
  line?: number;
  /** JSON: the index in the array of items. */
  index?: number;
}

/** One billed request as the gateway logged it (a type-2 row). */
export interface UsageLogRow {
  source: RowSource;
  /** `created_at` in epoch ms (a unix-seconds value × 1000). */
  time_ms: number;
  /** 1000 when the time was whole seconds, 1 when it carried milliseconds (ISO with fraction). */
  precision_ms: number;
  /** null: the file had no `type` (taken as consumption). */
  type: number | null;
  model: string;
  prompt_tokens: number;
  completion_tokens: number;
  /** new-api `other.cache_tokens` / CSV `cache_tokens`: cached prompt tokens, when stated. */
  cache_tokens: number | null;
  /** new-api `other.cache_creation_tokens` / CSV `cache_creation_tokens`, when stated. */
  cache_creation_tokens: number | null;
  quota: number;
  token_name: string | null;
  request_id: string | null;
  /** new-api `use_time`: seconds the gateway spent on the request. */
  use_time_s: number | null;
  is_stream: boolean | null;
}

/** A row that is not a billed request (top-up, manage, system …): listed, never matched. */
export interface SkippedLogRow {
  source: RowSource;
  type: number;
  label: string;
  quota: number | null;
}

export interface ParsedUsageLog {
  file: string;
  format: LogFormat;
  /** Which shape was recognised: `json-array`, `json-data`, `json-data-items`, `json-data-data`, `csv`. */
  shape: string;
  /** Rows (of any type) the file holds, readable or not. */
  total_rows: number;
  rows: UsageLogRow[];
  skipped: SkippedLogRow[];
  /** Rows that could not be read: each names file, line or path, and field. Such a row is not matched. */
  problems: SourceProblem[];
  /** Readable rows with an unreadable detail that was ignored (e.g. `other` not JSON): the row is kept. */
  warnings: SourceProblem[];
  /** CSV columns we do not use (e.g. a UI export's extra columns). */
  ignored_columns: string[];
}

export const CSV_REQUIRED_COLUMNS = [
  'created_at',
  'model_name',
  'prompt_tokens',
  'completion_tokens',
  'quota',
] as const;
export const CSV_OPTIONAL_COLUMNS = [
  'type',
  'token_name',
  'request_id',
  'use_time',
  'is_stream',
  'cache_tokens',
  'cache_creation_tokens',
] as const;

/** Unix seconds at or above this are milliseconds or garbage (year 5138): refused, not guessed. */
const MAX_UNIX_SECONDS = 100_000_000_000;

/** Reads and parses `file`; `format` defaults to the extension, then to sniffing the first byte. */
export function readUsageLog(file: string, format?: LogFormat): ParsedUsageLog {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw fileError(file, `cannot read the usage log: ${err instanceof Error ? err.message : String(err)}`);
  }
  return parseUsageLog(text, file, format ?? detectFormat(file, text));
}

export function detectFormat(file: string, text: string): LogFormat {
  const lower = file.toLowerCase();
  if (lower.endsWith('.json')) return 'json';
  if (lower.endsWith('.csv')) return 'csv';
  const first = text.replace(/^\uFEFF/, '').trimStart()[0];
  return first === '{' || first === '[' ? 'json' : 'csv';
}

export function parseUsageLog(text: string, file: string, format: LogFormat): ParsedUsageLog {
  const body = text.replace(/^\uFEFF/, '');
  return format === 'json' ? parseJsonLog(body, file) : parseCsvLog(body, file);
}

function fileError(file: string, message: string, extra: Omit<SourceProblem, 'file' | 'message'> = {}) {
  return new ConfigError([{ file, ...extra, message }], 'USAGE');
}

function emptyLog(file: string, format: LogFormat, shape: string): ParsedUsageLog {
  return {
    file,
    format,
    shape,
    total_rows: 0,
    rows: [],
    skipped: [],
    problems: [],
    warnings: [],
    ignored_columns: [],
  };
}

// ---------------------------------------------------------------------------------------------
// Field readers: each returns the value or a message saying what was expected. A JSON value may be
// a number or text (some exports stringify); a CSV value is always text, '' meaning absent.

type Read<T> = { ok: true; value: T } | { ok: false; message: string };
const ok = <T>(value: T): Read<T> => ({ ok: true, value });
const bad = <T>(message: string): Read<T> => ({ ok: false, message });

const isAbsent = (v: unknown): boolean => v === undefined || v === null || v === '';

function readCount(v: unknown): Read<number> {
  const n = typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : v;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0) return ok(n);
  return bad(`expected a whole number ≥ 0, got ${JSON.stringify(v)}`);
}

function readSeconds(v: unknown): Read<number> {
  const n = typeof v === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : v;
  if (typeof n === 'number' && Number.isFinite(n) && n >= 0) return ok(n);
  return bad(`expected a number of seconds ≥ 0, got ${JSON.stringify(v)}`);
}

function readType(v: unknown): Read<number> {
  const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
  if (typeof n === 'number' && Number.isSafeInteger(n)) return ok(n);
  return bad(`expected a log type number (2 = consumption), got ${JSON.stringify(v)}`);
}

function readBool(v: unknown): Read<boolean> {
  if (typeof v === 'boolean') return ok(v);
  const t = typeof v === 'string' ? v.trim().toLowerCase() : v;
  if (t === 1 || t === '1' || t === 'true') return ok(true);
  if (t === 0 || t === '0' || t === 'false') return ok(false);
  return bad(`expected true/false or 1/0, got ${JSON.stringify(v)}`);
}

function readText(v: unknown): Read<string> {
  if (typeof v === 'string') return ok(v);
  if (typeof v === 'number') return ok(String(v));
  return bad(`expected text, got ${JSON.stringify(v)}`);
}

/**
 * `created_at`: unix seconds (number or digits), or ISO 8601 with a zone (`Z` or `±hh:mm`; a space
 * instead of `T` is accepted). A time without a zone is refused: which zone it meant is a guess.
 */
export function readTime(v: unknown): Read<{ ms: number; precision: number }> {
  if (typeof v === 'number' || (typeof v === 'string' && /^\s*\d+\s*$/.test(v))) {
    const s = Number(v);
    if (!Number.isSafeInteger(s) || s < 0)
      return bad(`expected unix seconds (a whole number), got ${JSON.stringify(v)}`);
    if (s >= MAX_UNIX_SECONDS)
      return bad(`${s} is too large for unix seconds (milliseconds?); give seconds or ISO 8601`);
    return ok({ ms: s * 1000, precision: 1000 });
  }
  if (typeof v === 'string') {
    const t = v.trim().replace(/^(\d{4}-\d{2}-\d{2}) (\d)/, '$1T$2');
    const m = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/i.exec(t);
    if (!m) {
      if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/i.test(t))
        return bad(`ISO time ${JSON.stringify(v)} has no time zone; add Z or an offset like +08:00`);
      return bad(`expected unix seconds or ISO 8601 with a zone, got ${JSON.stringify(v)}`);
    }
    const ms = Date.parse(t);
    if (!Number.isFinite(ms)) return bad(`not a valid time: ${JSON.stringify(v)}`);
    return ok({ ms, precision: m[2] !== undefined ? 1 : 1000 });
  }
  return bad(`expected unix seconds or ISO 8601, got ${JSON.stringify(v)}`);
}

// ---------------------------------------------------------------------------------------------
// One row, whatever the container: a getter of raw field values and a way to name a field.

interface RawRow {
  get(field: string): unknown;
  /** For JSON: the parsed `other` object (new-api), or a message why it could not be read. */
  other?: Read<Record<string, unknown>> | undefined;
  source: RowSource;
  /** SourceProblem location of a field. */
  at(field: string): Omit<SourceProblem, 'message'>;
}

type RowResult =
  | { kind: 'row'; row: UsageLogRow; warnings: SourceProblem[] }
  | { kind: 'skipped'; skipped: SkippedLogRow }
  | { kind: 'problem'; problems: SourceProblem[] };

/** new-api `other.cache_tokens` / `other.cache_creation_tokens`; an unreadable `other` only warns. */
function cacheFromOther(
  raw: RawRow,
  other: Read<Record<string, unknown>>,
  warnings: SourceProblem[],
): { tokens: number | null; creation: number | null } {
  if (!other.ok) {
    warnings.push({ ...raw.at('other'), message: `${other.message}; cache figures ignored` });
    return { tokens: null, creation: null };
  }
  const o = other.value;
  const figure = (key: string): number | null => {
    if (isAbsent(o[key])) return null;
    const r = readCount(o[key]);
    if (r.ok) return r.value;
    warnings.push({ ...raw.at(`other.${key}`), message: `${r.message}; ignored` });
    return null;
  };
  return { tokens: figure('cache_tokens'), creation: figure('cache_creation_tokens') };
}

/** Reads one row: type first (non-consumption rows need nothing else), then every billed field. */
function readRow(raw: RawRow): RowResult {
  const problems: SourceProblem[] = [];
  const need = <T>(field: string, reader: (v: unknown) => Read<T>, optional = false): T | null => {
    const v = raw.get(field);
    if (isAbsent(v)) {
      if (!optional) problems.push({ ...raw.at(field), message: 'missing' });
      return null;
    }
    const r = reader(v);
    if (!r.ok) {
      problems.push({ ...raw.at(field), message: r.message });
      return null;
    }
    return r.value;
  };
  const type = need('type', readType, true);
  if (problems.length > 0) return { kind: 'problem', problems };
  if (type !== null && type !== CONSUME_TYPE) {
    const q = raw.get('quota');
    const quota = isAbsent(q) ? null : readCount(q);
    return {
      kind: 'skipped',
      skipped: {
        source: raw.source,
        type,
        label: LOG_TYPE_LABELS[type] ?? 'other',
        quota: quota !== null && quota.ok ? quota.value : null,
      },
    };
  }
  const time = need('created_at', readTime);
  const model = need('model_name', readText);
  if (model !== null && model.trim() === '') problems.push({ ...raw.at('model_name'), message: 'empty' });
  const prompt = need('prompt_tokens', readCount);
  const completion = need('completion_tokens', readCount);
  const quota = need('quota', readCount);
  const tokenName = need('token_name', readText, true);
  const requestId = need('request_id', readText, true);
  const useTime = need('use_time', readSeconds, true);
  const isStream = need('is_stream', readBool, true);
  const warnings: SourceProblem[] = [];
  const cache =
    raw.other === undefined
      ? {
          tokens: need('cache_tokens', readCount, true),
          creation: need('cache_creation_tokens', readCount, true),
        }
      : cacheFromOther(raw, raw.other, warnings);
  if (problems.length > 0 || time === null || model === null) return { kind: 'problem', problems };
  return {
    kind: 'row',
    warnings,
    row: {
      source: raw.source,
      time_ms: time.ms,
      precision_ms: time.precision,
      type,
      model: model.trim(),
      prompt_tokens: prompt!,
      completion_tokens: completion!,
      cache_tokens: cache.tokens,
      cache_creation_tokens: cache.creation,
      quota: quota!,
      token_name: tokenName,
      request_id: requestId === null || requestId.trim() === '' ? null : requestId.trim(),
      use_time_s: useTime,
      is_stream: isStream,
    },
  };
}

function collect(log: ParsedUsageLog, result: RowResult): void {
  log.total_rows++;
  if (result.kind === 'row') {
    log.rows.push(result.row);
    log.warnings.push(...result.warnings);
  } else if (result.kind === 'skipped') log.skipped.push(result.skipped);
  else log.problems.push(...result.problems);
}

// ---------------------------------------------------------------------------------------------
// JSON

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** 1-based line and column of a character offset. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split(/\r\n|\r|\n/).length;
  const lastBreak = Math.max(before.lastIndexOf('\n'), before.lastIndexOf('\r'));
  return { line, column: offset - lastBreak };
}

function parseJsonText(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const pos = /at position (\d+)/.exec(message);
    const where = pos ? lineColumn(text, Number(pos[1])) : {};
    throw fileError(file, `not valid JSON: ${message}`, where);
  }
}

/** Finds the list of log items in the gateways' envelopes; throws naming what was expected. */
function jsonItems(root: unknown, file: string): { items: unknown[]; path: string; shape: string } {
  if (Array.isArray(root)) return { items: root, path: '', shape: 'json-array' };
  if (isObject(root)) {
    if (root.success === false) {
      const msg = typeof root.message === 'string' && root.message !== '' ? root.message : 'no message';
      throw fileError(file, `the gateway answered success: false (${msg}); export the log again`, {
        field: 'success',
      });
    }
    const data = root.data;
    if (Array.isArray(data)) return { items: data, path: 'data', shape: 'json-data' };
    if (isObject(data) && Array.isArray(data.items))
      return { items: data.items, path: 'data.items', shape: 'json-data-items' };
    if (isObject(data) && Array.isArray(data.data))
      return { items: data.data, path: 'data.data', shape: 'json-data-data' };
    if (Array.isArray(root.items)) return { items: root.items, path: 'items', shape: 'json-items' };
  }
  throw fileError(
    file,
    'not a one-api/new-api usage log: expected a JSON array of log rows, {"data": [...]} ' +
      '(one-api /api/log/self) or {"data": {"items": [...]}} (new-api /api/log/)',
  );
}

function readOther(v: unknown): Read<Record<string, unknown>> | undefined {
  if (isAbsent(v)) return undefined;
  if (isObject(v)) return ok(v);
  if (typeof v === 'string') {
    try {
      const parsed: unknown = JSON.parse(v);
      if (isObject(parsed)) return ok(parsed);
    } catch {
      // Reported below as a warning: the row itself is still readable.
    }
    return bad('not a JSON object');
  }
  return bad(`expected a JSON object or its text, got ${JSON.stringify(v)}`);
}

function parseJsonLog(text: string, file: string): ParsedUsageLog {
  const { items, path, shape } = jsonItems(parseJsonText(text, file), file);
  const log = emptyLog(file, 'json', shape);
  items.forEach((item, index) => {
    const itemPath = `${path}[${index}]`;
    const source: RowSource = { where: `${file} ${itemPath}`, index };
    if (!isObject(item)) {
      collect(log, {
        kind: 'problem',
        problems: [
          { file, field: itemPath, message: `expected a log row object, got ${JSON.stringify(item)}` },
        ],
      });
      return;
    }
    // `other` present (new-api): cache figures come from it; absent: from top-level fields if any.
    const other = readOther(item.other);
    collect(
      log,
      readRow({
        get: (f) => item[f],
        other,
        source,
        at: (field) => ({ file, field: `${itemPath}.${field}` }),
      }),
    );
  });
  return log;
}

// ---------------------------------------------------------------------------------------------
// CSV (RFC 4180: quoted fields with "" escapes and line breaks; CRLF, LF or CR line ends)

interface CsvRecord {
  line: number;
  fields: string[];
}

/** Splits CSV text into records, each with the line it starts on. An unclosed quote is reported. */
export function splitCsv(text: string): { records: CsvRecord[]; unclosedQuoteLine?: number } {
  const records: CsvRecord[] = [];
  let fields: string[] = [];
  let field = '';
  let line = 1;
  let startLine = 1;
  let inQuotes = false;
  let quoteLine = 0;
  let i = 0;
  const endRecord = (): void => {
    fields.push(field);
    // A blank line is not a record (a trailing newline, an empty line between rows).
    if (!(fields.length === 1 && fields[0] === '')) records.push({ line: startLine, fields });
    fields = [];
    field = '';
  };
  while (i < text.length) {
    const c = text[i]!;
    if (inQuotes) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        inQuotes = false;
      } else {
        if (c === '\n' || (c === '\r' && text[i + 1] !== '\n')) line++;
        field += c;
      }
      i++;
      continue;
    }
    if (c === '"' && field === '') {
      inQuotes = true;
      quoteLine = line;
    } else if (c === ',') {
      fields.push(field);
      field = '';
    } else if (c === '\r' || c === '\n') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      endRecord();
      line++;
      startLine = line;
    } else field += c;
    i++;
  }
  if (inQuotes) return { records, unclosedQuoteLine: quoteLine };
  if (field !== '' || fields.length > 0) endRecord();
  return { records };
}

const CSV_KNOWN = new Set<string>([...CSV_REQUIRED_COLUMNS, ...CSV_OPTIONAL_COLUMNS]);

function csvHeader(record: CsvRecord | undefined, file: string): { columns: string[]; ignored: string[] } {
  if (!record) throw fileError(file, 'empty file: expected a header line and log rows');
  const columns = record.fields.map((f) => f.trim().toLowerCase());
  const seen = new Set<string>();
  for (const c of columns) {
    if (c !== '' && seen.has(c))
      throw fileError(file, `column ${JSON.stringify(c)} appears twice`, { line: record.line, field: c });
    seen.add(c);
  }
  const missing = CSV_REQUIRED_COLUMNS.filter((c) => !seen.has(c));
  if (missing.length > 0) {
    throw fileError(
      file,
      `missing column${missing.length > 1 ? 's' : ''} ${missing.join(', ')}; expected a header ` +
        `${CSV_REQUIRED_COLUMNS.join(',')} (optional: ${CSV_OPTIONAL_COLUMNS.join(',')})`,
      { line: record.line, field: 'header' },
    );
  }
  return { columns, ignored: columns.filter((c) => c !== '' && !CSV_KNOWN.has(c)) };
}

function parseCsvLog(text: string, file: string): ParsedUsageLog {
  const { records, unclosedQuoteLine } = splitCsv(text);
  const { columns, ignored } = csvHeader(records[0], file);
  const log = emptyLog(file, 'csv', 'csv');
  log.ignored_columns = ignored;
  for (const record of records.slice(1)) {
    const source: RowSource = { where: `${file}:${record.line}`, line: record.line };
    if (record.fields.length !== columns.length) {
      collect(log, {
        kind: 'problem',
        problems: [
          {
            file,
            line: record.line,
            message: `expected ${columns.length} fields as in the header, got ${record.fields.length}`,
          },
        ],
      });
      continue;
    }
    const values = new Map(columns.map((c, i) => [c, record.fields[i]!.trim()]));
    collect(
      log,
      readRow({ get: (f) => values.get(f), source, at: (field) => ({ file, line: record.line, field }) }),
    );
  }
  if (unclosedQuoteLine !== undefined) {
    log.total_rows++;
    log.problems.push({
      file,
      line: unclosedQuoteLine,
      message: 'a quoted field is never closed: this line and everything after it could not be read',
    });
  }
  return log;
}
