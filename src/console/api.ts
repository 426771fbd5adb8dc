/**
 * The console's JSON API under /-/api/ (docs/console.md documents each endpoint). Read-only: every
 * route is GET (HEAD follows), and nothing here writes. Every read of the audit log runs on the
 * reader thread (`deps.reader.run`, reader.ts), never on the event loop that carries the proxied
 * traffic; this file only checks parameters and shapes answers. Query parameters are checked strictly: an
 * unknown name or a bad value is a 400 whose message says what is expected, because a typo
 * (`modle=`) silently ignored would show unfiltered numbers as if they were filtered.
 */
import express, { type Request, type Response, type Router } from 'express';
import type { Budgets } from '../budgets/index.js';
import { statusToJson } from '../cli/budgets.js';
import { priceRows } from '../cli/prices.js';
import { parseBy, parseTimeBound, reportToJson } from '../cli/report.js';
import type { Settings } from '../config/types.js';
import { UsageError } from '../errors.js';
import { FLEET_NOT_CONFIGURED } from '../fleet/connect.js';
import type { ShipperStatus } from '../fleet/shipper.js';
import { formatNanos, nanosToDecimalText } from '../pricing/money.js';
import type { TablePriceBook } from '../pricing/index.js';
import { COST_SOURCES, ERROR_TYPES, OPERATIONS, USAGE_SOURCES } from '../record.js';
import { FLEET_REPORT_DIMENSIONS } from '../sinks/audit/queries.js';
import { rowToRecord } from '../sinks/audit/row.js';
import type { FleetAnswer, FleetView } from './fleet.js';
import { SPEND_DIMENSIONS, type RequestFilter, type StoredRow } from './queries.js';
import { ConsoleUnavailable, type AuditReader } from './reader.js';

export interface ApiDeps {
  settings: Settings;
  reader: AuditReader;
  priceBook: TablePriceBook;
  budgets?: Budgets;
  /** The fleet Postgres view; absent without `fleet.postgres` (the endpoint is then a 404). */
  fleet?: FleetView;
  version: string;
  now?: () => number;
}

export const MAX_PAGE = 500;
const DEFAULT_PAGE = 100;
const MAX_BUCKETS = 2000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const MAX_TEXT = 256;

/** The query string as single strings; a repeated or unknown parameter is a 400. */
function params(req: Request, allowed: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.query)) {
    if (!allowed.includes(name))
      throw new UsageError(
        `unknown parameter ${JSON.stringify(name)}; allowed: ${allowed.join(', ') || '(none)'}`,
      );
    if (typeof value !== 'string') throw new UsageError(`${name}: give it once, as a plain value`);
    if (value.length > MAX_TEXT) throw new UsageError(`${name}: longer than ${MAX_TEXT} characters`);
    out[name] = value;
  }
  return out;
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value))
    throw new UsageError(`${name}: expected one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}

function window(
  p: Record<string, string>,
  nowMs: number,
  defaultSince: string | undefined,
): { fromMs?: number; toMs?: number } {
  const since = p.since ?? defaultSince;
  const fromMs = since !== undefined && since !== '' ? parseTimeBound(since, 'since', nowMs) : undefined;
  const toMs = p.until !== undefined && p.until !== '' ? parseTimeBound(p.until, 'until', nowMs) : undefined;
  if (fromMs !== undefined && toMs !== undefined && fromMs >= toMs)
    throw new UsageError('since must be before until');
  return { fromMs, toMs };
}

function statusFilter(text: string): RequestFilter['status'] {
  if (text === 'none') return 'none';
  const cls = /^([1-5])xx$/.exec(text);
  if (cls) return { class: Number(cls[1]) };
  if (/^[1-5]\d\d$/.test(text)) return { exact: Number(text) };
  throw new UsageError(
    `status: expected 2xx, 4xx, 5xx, an exact status such as 429, or none; got ${JSON.stringify(text)}`,
  );
}

const REQUEST_PARAMS = [
  'since',
  'until',
  'app',
  'model',
  'upstream',
  'operation',
  'status',
  'error_type',
  'usage_source',
  'cost_source',
  'limit',
  'before',
] as const;

function requestFilter(p: Record<string, string>, nowMs: number): RequestFilter {
  const nonEmpty = (v: string | undefined) => (v === undefined || v === '' ? undefined : v);
  const f: RequestFilter = {
    ...window(p, nowMs, undefined),
    app: nonEmpty(p.app),
    model: nonEmpty(p.model),
    upstream: nonEmpty(p.upstream),
  };
  if (nonEmpty(p.operation)) f.operation = oneOf('operation', p.operation!, OPERATIONS);
  if (nonEmpty(p.status)) f.status = statusFilter(p.status!);
  if (nonEmpty(p.error_type))
    f.errorType = oneOf('error_type', p.error_type!, [...ERROR_TYPES, 'none', 'any'] as const);
  if (nonEmpty(p.usage_source)) f.usageSource = oneOf('usage_source', p.usage_source!, USAGE_SOURCES);
  if (nonEmpty(p.cost_source))
    f.costSource = oneOf('cost_source', p.cost_source!, [...COST_SOURCES, 'none'] as const);
  return f;
}

function pageSize(text: string | undefined): number {
  if (text === undefined || text === '') return DEFAULT_PAGE;
  if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > MAX_PAGE)
    throw new UsageError(`limit: expected a whole number from 1 to ${MAX_PAGE}, got ${JSON.stringify(text)}`);
  return Number(text);
}

/**
 * A stored row as the API shows it: every record field (booleans as booleans), plus the cost as
 * `tokenmeter report` prints it: `cost` exact decimal text (its JSON), `cost_text` its table cell.
 */
export function rowJson(row: StoredRow): Record<string, unknown> {
  const record = rowToRecord(row);
  const nanos = record.cost_nanos;
  const reported = record.upstream_reported_cost_nanos;
  return {
    ...record,
    cost: nanos === null ? null : nanosToDecimalText(nanos),
    cost_text: nanos === null ? null : formatNanos(nanos),
    upstream_reported_cost: reported === null ? null : nanosToDecimalText(reported),
  };
}

function auditOff(res: Response, deps: ApiDeps, extra: Record<string, unknown>): boolean {
  const state = deps.reader.state();
  if (state.enabled) return false;
  res.json({ audit: false, audit_reason: state.reason, ...extra });
  return true;
}

async function listRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const now = deps.now ?? Date.now;
  const p = params(req, REQUEST_PARAMS);
  const filter = requestFilter(p, now());
  const limit = pageSize(p.limit);
  if (auditOff(res, deps, { rows: [], next: null })) return;
  const rows = await deps.reader.run({ op: 'listRequests', filter, limit, before: p.before || undefined });
  if (rows === null) throw new UsageError(`before: no request with id ${JSON.stringify(p.before)}`);
  res.json({
    audit: true,
    rows: rows.map(rowJson),
    next: rows.length === limit ? (rows[rows.length - 1]!.id as string) : null,
  });
}

async function detailRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  params(req, []);
  const id = String(req.params.id);
  const state = deps.reader.state();
  if (!state.enabled) {
    res.status(404).json({ error: state.reason });
    return;
  }
  const found = await deps.reader.run({ op: 'getRequest', id });
  if (!found) {
    res.status(404).json({ error: `no request with id ${JSON.stringify(id.slice(0, MAX_TEXT))}` });
    return;
  }
  res.json({
    audit: true,
    capture_bodies: deps.settings.audit.captureBodies,
    record: rowJson(found.row),
    bodies: found.bodies,
  });
}

function bucketOf(text: string | undefined, spanMs: number): { name: 'hour' | 'day'; ms: number } {
  const name =
    text === undefined || text === ''
      ? spanMs <= 2 * DAY_MS
        ? 'hour'
        : 'day'
      : oneOf('bucket', text, ['hour', 'day'] as const);
  const ms = name === 'hour' ? HOUR_MS : DAY_MS;
  if (spanMs / ms > MAX_BUCKETS)
    throw new UsageError(
      `the window holds more than ${MAX_BUCKETS} ${name} buckets; narrow since/until or use bucket=day`,
    );
  return { name, ms };
}

async function spendRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const nowMs = (deps.now ?? Date.now)();
  const p = params(req, ['since', 'until', 'by', 'bucket']);
  const w = window(p, nowMs, '24h');
  const fromMs = w.fromMs!;
  const toMs = w.toMs ?? nowMs;
  const by = p.by === undefined || p.by === '' ? undefined : oneOf('by', p.by, SPEND_DIMENSIONS);
  const bucket = bucketOf(p.bucket, toMs - fromMs);
  const head = {
    from: new Date(fromMs).toISOString(),
    to: new Date(toMs).toISOString(),
    by: by ?? null,
    bucket: bucket.name,
    bucket_ms: bucket.ms,
  };
  if (auditOff(res, deps, { ...head, series: [], totals: [], caveats: null })) return;
  // The series and, for the same window, `report`'s groups and totals (one query on the reader thread).
  const { points, report } = await deps.reader.run({ op: 'spend', fromMs, toMs, bucketMs: bucket.ms, by });
  const series = new Map<
    string,
    { key: string | null; currency: string; total: bigint; points: unknown[] }
  >();
  for (const pt of points) {
    const id = JSON.stringify([pt.key, pt.currency]);
    let s = series.get(id);
    if (!s) series.set(id, (s = { key: pt.key, currency: pt.currency, total: 0n, points: [] }));
    const nanos = BigInt(pt.cost_nanos);
    s.total += nanos;
    s.points.push({
      t: new Date(pt.t).toISOString(),
      cost: nanosToDecimalText(nanos),
      cost_nanos: nanos.toString(),
      requests: pt.requests,
    });
  }
  res.json({
    audit: true,
    ...head,
    series: [...series.values()].map((s) => ({
      key: s.key,
      currency: s.currency,
      total: nanosToDecimalText(s.total),
      total_nanos: s.total.toString(),
      points: s.points,
    })),
    groups: report.groups,
    totals: report.totals,
    caveats: report.caveats,
  });
}

async function reportRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const nowMs = (deps.now ?? Date.now)();
  const p = params(req, ['since', 'until', 'by']);
  const w = window(p, nowMs, '24h');
  const by = parseBy(p.by);
  if (auditOff(res, deps, {})) return;
  const report = await deps.reader.run({
    op: 'report',
    options: {
      fromMs: w.fromMs!,
      toMs: w.toMs ?? nowMs,
      by,
      reportCurrency: deps.settings.reportCurrency,
      fx: deps.settings.fx,
    },
  });
  res.json(report);
}

async function pricesRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const nowMs = (deps.now ?? Date.now)();
  const p = params(req, ['since', 'until']);
  const w = window(p, nowMs, '30d');
  const applies = new Map<unknown, string[]>();
  for (const u of deps.settings.upstreams) {
    for (const t of deps.priceBook.tablesFor(u.name))
      applies.set(t.table, [...(applies.get(t.table) ?? []), u.name]);
  }
  const rows = deps.priceBook
    .allTables()
    .flatMap((t) =>
      priceRows(t.table, t.origin).map((r) => ({ ...r, applies_to: applies.get(t.table) ?? [] })),
    );
  const head = {
    from: new Date(w.fromMs!).toISOString(),
    to: new Date(w.toMs ?? nowMs).toISOString(),
    prices: rows,
  };
  if (auditOff(res, deps, { ...head, unpriced: [] })) return;
  const found = await deps.reader.run({
    op: 'unpricedModels',
    fromMs: w.fromMs!,
    toMs: w.toMs ?? nowMs,
    limit: MAX_PAGE,
  });
  const unpriced = found.map((u) => ({ ...u, last_seen: new Date(u.last_seen).toISOString() }));
  res.json({ audit: true, ...head, unpriced });
}

/** Billed vs metered per upstream and key: `tokenmeter reconcile --format json` (docs/reconcile.md). */
async function reconcileRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const nowMs = (deps.now ?? Date.now)();
  const p = params(req, ['since', 'until', 'upstream']);
  const w = window(p, nowMs, '24h');
  const fromMs = w.fromMs!;
  const toMs = w.toMs ?? nowMs;
  const upstream = p.upstream === undefined || p.upstream === '' ? undefined : p.upstream;
  const head = { from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString() };
  if (auditOff(res, deps, { ...head, lines: [] })) return;
  const answer = await deps.reader.run({ op: 'reconcile', options: { fromMs, toMs, upstream } });
  res.json({ audit: true, ...answer });
}

function shipperJson(s: ShipperStatus): Record<string, unknown> {
  return {
    state: s.state,
    lag_rows: s.lagRows ?? null,
    shipped: s.shipped,
    failures: s.failures,
    last_success: s.lastSuccessMs === undefined ? null : new Date(s.lastSuccessMs).toISOString(),
  };
}

/** This host's name and shipper state: shown even when Postgres is down (the 503 carries it too). */
function thisHost(fleet: FleetView): Record<string, unknown> {
  const s = fleet.shipperStatus();
  return { this_host: fleet.host, shipper: s === undefined ? null : shipperJson(s) };
}

/**
 * Every host at once from the fleet Postgres: `tokenmeter report --fleet --format json` for the
 * window (`by` may name `host`), plus each host's rows and newest record there (docs/console.md).
 */
async function fleetRoute(deps: ApiDeps, req: Request, res: Response): Promise<void> {
  const nowMs = (deps.now ?? Date.now)();
  const p = params(req, ['since', 'until', 'by']);
  const w = window(p, nowMs, '24h');
  const by = parseBy(p.by, FLEET_REPORT_DIMENSIONS);
  const fleet = deps.fleet;
  if (!fleet) {
    res.status(404).json({ error: `${FLEET_NOT_CONFIGURED} (docs/fleet.md)` });
    return;
  }
  let answer: FleetAnswer;
  try {
    answer = await fleet.read({
      fromMs: w.fromMs!,
      toMs: w.toMs ?? nowMs,
      by,
      reportCurrency: deps.settings.reportCurrency,
      fx: deps.settings.fx,
    });
  } catch (err) {
    if (!(err instanceof ConsoleUnavailable)) throw err;
    res
      .status(err.status)
      .set('Retry-After', '5')
      .json({ error: err.message, ...thisHost(fleet) });
    return;
  }
  res.json({
    ...reportToJson(answer.report),
    postgres: fleet.postgres,
    ...thisHost(fleet),
    hosts: answer.hosts.map((h) => ({
      host: h.host,
      rows: h.rows,
      newest_ts_start: h.newestMs,
      newest: new Date(h.newestMs).toISOString(),
      newest_age_ms: nowMs - h.newestMs,
    })),
  });
}

function budgetsRoute(deps: ApiDeps, req: Request, res: Response): void {
  params(req, []);
  const state = deps.reader.state();
  res.json({
    budgets: (deps.budgets?.status() ?? []).map(statusToJson),
    // Without an audit file, period-to-date spend restarts from zero at every start (docs/budgets.md).
    from_audit_log: state.enabled,
  });
}

function statusRoute(deps: ApiDeps, req: Request, res: Response): void {
  params(req, []);
  const state = deps.reader.state();
  res.json({
    version: deps.version,
    audit: state.enabled,
    audit_reason: state.enabled ? null : state.reason,
    capture_bodies: deps.settings.audit.captureBodies,
    auth: deps.settings.authToken !== undefined,
    upstreams: deps.settings.upstreams.map((u) => ({ name: u.name, host: u.url.host })),
    report_currency: deps.settings.reportCurrency ?? null,
    // The Fleet page is offered only when there is a fleet Postgres to read.
    fleet: deps.fleet !== undefined,
    // The filter vocabularies, from the record's own lists: the page keeps no copy of them.
    error_types: ERROR_TYPES,
    usage_sources: USAGE_SOURCES,
    cost_sources: COST_SOURCES,
  });
}

/** The /-/api router (mounted at /-/api by the console app). */
export function apiRouter(deps: ApiDeps): Router {
  const r = express.Router();
  // Express 5 passes a rejected promise to the error handler (index.ts), like a throw.
  const route =
    (fn: (deps: ApiDeps, req: Request, res: Response) => void | Promise<void>) =>
    (req: Request, res: Response) =>
      fn(deps, req, res);
  r.get('/status', route(statusRoute));
  r.get('/requests', route(listRoute));
  r.get('/requests/:id', route(detailRoute));
  r.get('/spend', route(spendRoute));
  r.get('/report', route(reportRoute));
  r.get('/budgets', route(budgetsRoute));
  r.get('/prices', route(pricesRoute));
  r.get('/reconcile', route(reconcileRoute));
  r.get('/fleet', route(fleetRoute));
  return r;
}
