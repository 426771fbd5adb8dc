/**
 * Matching a gateway's usage-log rows to audit rows one-to-one (issue 13; docs/reconcile.md
 * "Importing a gateway's usage log"). Pure except for {@link loadAuditRows}, a read-only query.
 *
 * A log row and an audit row are candidates when:
 * - the gateway's request id equals the row's `upstream_request_id` (one-api `X-Oneapi-Request-Id`,
 *   new-api `X-New-Api-Request-Id`, which the proxy records) — decisive on its own; or
 * - the audit row is one the gateway bills ({@link expectedBilled}), the log's `model_name` equals
 *   `request_model` or `response_model` (exactly, else ignoring case), AND the log time falls in
 *   `[ts_start − precision − window, ts_end + window]`. one-api and new-api stamp `created_at` when
 *   they write the log, after the answer (so ≈ our `ts_end`), truncated to whole seconds
 *   (`precision`); the interval also covers a gateway that stamps the start, and a long stream.
 *   `window` (default 2 min) absorbs clock skew between the two hosts.
 *
 * Candidates are ranked, best first, by: request id; then tokens equal on both sides; then known
 * and different (smallest |Δprompt|+|Δcompletion| first); then ours not reported (estimated or
 * missing usage). Within a rank, nearer in time first, exact model name before a case-insensitive
 * one, then file order and audit id. Pairs are taken greedily in that order, each row at most once:
 * deterministic, and two identical requests a second apart each get the audit row nearest in time.
 */
import type Database from 'better-sqlite3';

/** The audit columns reconciliation reads (a subset of the §4.5 record). */
export interface AuditRow {
  id: string;
  ts_start: number;
  ts_end: number;
  upstream: string;
  operation: string;
  request_model: string | null;
  response_model: string | null;
  app: string;
  http_status: number | null;
  error_type: string | null;
  usage_source: string;
  input_tokens: number | null;
  cache_read_tokens: number | null;
  cache_write_tokens: number | null;
  output_tokens: number | null;
  cost_nanos: number | null;
  currency: string | null;
  upstream_request_id: string | null;
}

const AUDIT_COLUMNS: readonly (keyof AuditRow)[] = [
  'id',
  'ts_start',
  'ts_end',
  'upstream',
  'operation',
  'request_model',
  'response_model',
  'app',
  'http_status',
  'error_type',
  'usage_source',
  'input_tokens',
  'cache_read_tokens',
  'cache_write_tokens',
  'output_tokens',
  'cost_nanos',
  'currency',
  'upstream_request_id',
];

/** Audit rows with `ts_start` in `[fromMs, toMs)`, optionally of one upstream, oldest first. */
export function loadAuditRows(
  db: Database.Database,
  q: { fromMs: number; toMs: number; upstream?: string },
): AuditRow[] {
  const params: (string | number)[] = [q.fromMs, q.toMs];
  let where = 'ts_start >= ? AND ts_start < ?';
  if (q.upstream !== undefined) {
    where += ' AND upstream = ?';
    params.push(q.upstream);
  }
  return db
    .prepare(
      `SELECT ${AUDIT_COLUMNS.map((c) => `"${c}"`).join(', ')} FROM requests WHERE ${where} ORDER BY ts_start, id`,
    )
    .all(...params) as AuditRow[];
}

/**
 * The gateway answered and the request is one it bills (one-api / new-api refund the quota of a
 * failed relay and do not bill model lists). Other rows match only by request id, never by time
 * and model: a 500 near a billed row is not that row.
 */
export function expectedBilled(a: AuditRow): boolean {
  return a.operation !== 'other' && a.http_status !== null && a.http_status < 400;
}

/** What the matcher needs of a log row. */
export interface LogKey {
  time_ms: number;
  precision_ms: number;
  model: string;
  prompt_tokens: number;
  completion_tokens: number;
  cache_tokens: number | null;
  cache_creation_tokens: number | null;
  request_id: string | null;
}

/**
 * Our prompt total in the gateway's terms: input + cache_read + cache_write (§4.5 partition), or
 * null when input is not known. A cache part that is NULL was not reported by the upstream, so the
 * upstream's own prompt figure contained none: the reported parts are the whole prompt.
 */
export function meteredPrompt(a: AuditRow): number | null {
  if (a.input_tokens === null) return null;
  return [a.cache_read_tokens, a.cache_write_tokens].reduce<number>(
    (sum, part) => (part === null ? sum : sum + part),
    a.input_tokens,
  );
}

export type PromptBasis = 'as_logged' | 'plus_cache';

/**
 * The gateway's prompt total closest to ours. new-api logs `prompt_tokens` including cached tokens
 * for OpenAI-style channels but excluding them for Claude channels (cache in `other.cache_tokens`,
 * `other.cache_creation_tokens`); which one a row used is not stated, so both readings are tried
 * and the one that agrees better with ours is kept (and named in the result).
 */
export function billedPrompt(log: LogKey, metered: number | null): { tokens: number; basis: PromptBasis } {
  const plusCache = [log.cache_tokens, log.cache_creation_tokens].reduce<number>(
    (sum, part) => (part === null ? sum : sum + part),
    log.prompt_tokens,
  );
  if (plusCache === log.prompt_tokens || metered === null)
    return { tokens: log.prompt_tokens, basis: 'as_logged' };
  return Math.abs(plusCache - metered) < Math.abs(log.prompt_tokens - metered)
    ? { tokens: plusCache, basis: 'plus_cache' }
    : { tokens: log.prompt_tokens, basis: 'as_logged' };
}

export type MatchedBy = 'request_id' | 'time_model';
export type ModelMatch = 'exact' | 'case_insensitive' | 'differs';

export interface MatchedIndexPair {
  log: number;
  audit: number;
  by: MatchedBy;
  model_match: ModelMatch;
  /** How far the log time lies outside our [start − precision, end] interval (0 = inside). */
  time_gap_ms: number;
}

export interface Unmatched {
  log: number;
  reason: string;
}

export interface MatchOutcome {
  pairs: MatchedIndexPair[];
  unmatchedLogs: Unmatched[];
  /** Indexes of audit rows no log row took. */
  unmatchedAudit: number[];
}

/** Rank classes: lower is better. */
const RANK_REQUEST_ID = 0;
const RANK_TOKENS_EQUAL = 1;
const RANK_TOKENS_DIFFER = 2;
const RANK_OURS_UNREPORTED = 3;

interface Candidate {
  log: number;
  audit: number;
  rank: number;
  tokenDistance: number;
  near: number;
  model: ModelMatch;
  gap: number;
}

function modelMatch(logModel: string, a: AuditRow): ModelMatch {
  if (logModel === a.request_model || logModel === a.response_model) return 'exact';
  const lower = logModel.toLowerCase();
  if (lower === a.request_model?.toLowerCase() || lower === a.response_model?.toLowerCase())
    return 'case_insensitive';
  return 'differs';
}

/** ms by which the log time lies outside `[ts_start − precision, ts_end]`. */
export function timeGap(log: LogKey, a: AuditRow): number {
  return Math.max(0, a.ts_start - log.precision_ms - log.time_ms, log.time_ms - a.ts_end);
}

/** Distance of the middle of the log's time unit to our nearer end: the within-window tie-break. */
function nearness(log: LogKey, a: AuditRow): number {
  const mid = log.time_ms + Math.floor(log.precision_ms / 2);
  return Math.min(Math.abs(mid - a.ts_end), Math.abs(mid - a.ts_start));
}

function candidate(log: LogKey, logIdx: number, a: AuditRow, auditIdx: number, byId: boolean): Candidate {
  const mPrompt = meteredPrompt(a);
  const known = mPrompt !== null && a.output_tokens !== null;
  let rank: number;
  let tokenDistance = Number.MAX_SAFE_INTEGER;
  if (known) {
    const billed = billedPrompt(log, mPrompt);
    tokenDistance = Math.abs(billed.tokens - mPrompt) + Math.abs(log.completion_tokens - a.output_tokens!);
  }
  if (byId) rank = RANK_REQUEST_ID;
  else if (known && tokenDistance === 0) rank = RANK_TOKENS_EQUAL;
  else if (known && a.usage_source === 'reported') rank = RANK_TOKENS_DIFFER;
  else rank = RANK_OURS_UNREPORTED;
  return {
    log: logIdx,
    audit: auditIdx,
    rank,
    tokenDistance,
    near: nearness(log, a),
    model: modelMatch(log.model, a),
    gap: timeGap(log, a),
  };
}

const MODEL_ORDER: Record<ModelMatch, number> = { exact: 0, case_insensitive: 1, differs: 2 };

function compareCandidates(x: Candidate, y: Candidate, audit: readonly AuditRow[]): number {
  return (
    x.rank - y.rank ||
    x.tokenDistance - y.tokenDistance ||
    x.near - y.near ||
    MODEL_ORDER[x.model] - MODEL_ORDER[y.model] ||
    x.log - y.log ||
    (audit[x.audit]!.id < audit[y.audit]!.id ? -1 : audit[x.audit]!.id > audit[y.audit]!.id ? 1 : 0)
  );
}

/** Audit rows grouped by lower-cased model name (request and response model), sorted by ts_start. */
class ModelIndex {
  private readonly groups = new Map<string, { rows: number[]; maxDuration: number }>();

  constructor(private readonly audit: readonly AuditRow[]) {
    audit.forEach((a, i) => {
      if (!expectedBilled(a)) return;
      const names = new Set([a.request_model?.toLowerCase(), a.response_model?.toLowerCase()]);
      for (const name of names) {
        if (name === undefined) continue;
        const g = this.groups.get(name) ?? { rows: [], maxDuration: 0 };
        g.rows.push(i);
        g.maxDuration = Math.max(g.maxDuration, a.ts_end - a.ts_start);
        this.groups.set(name, g);
      }
    });
    // Rows arrive sorted by ts_start (loadAuditRows), but tests may hand any order.
    for (const g of this.groups.values()) g.rows.sort((x, y) => audit[x]!.ts_start - audit[y]!.ts_start);
  }

  /** Audit indexes with this model whose ts_start could put the log time within the window. */
  near(model: string, timeMs: number, reachMs: number): number[] {
    const g = this.groups.get(model.toLowerCase());
    if (!g) return [];
    const lo = timeMs - reachMs - g.maxDuration;
    const hi = timeMs + reachMs;
    let left = 0;
    let right = g.rows.length;
    while (left < right) {
      const mid = (left + right) >> 1;
      if (this.audit[g.rows[mid]!]!.ts_start < lo) left = mid + 1;
      else right = mid;
    }
    const out: number[] = [];
    for (let i = left; i < g.rows.length && this.audit[g.rows[i]!]!.ts_start <= hi; i++) out.push(g.rows[i]!);
    return out;
  }

  /** The smallest time gap to any row of this model (for the "why unmatched" text), or null. */
  nearestGap(log: LogKey): number | null {
    const g = this.groups.get(log.model.toLowerCase());
    if (!g) return null;
    let best: number | null = null;
    for (const i of g.rows) {
      const gap = timeGap(log, this.audit[i]!);
      if (best === null || gap < best) best = gap;
    }
    return best;
  }
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

/** Assigns log rows to audit rows one-to-one; see the module comment for the rules. */
export function matchLogRows(
  logs: readonly LogKey[],
  audit: readonly AuditRow[],
  windowMs: number,
): MatchOutcome {
  const index = new ModelIndex(audit);
  const byRequestId = new Map<string, number>();
  audit.forEach((a, i) => {
    if (a.upstream_request_id !== null && !byRequestId.has(a.upstream_request_id))
      byRequestId.set(a.upstream_request_id, i);
  });
  const candidates: Candidate[] = [];
  const candidateCount = new Array<number>(logs.length).fill(0);
  logs.forEach((log, li) => {
    const idHit = log.request_id !== null ? byRequestId.get(log.request_id) : undefined;
    if (idHit !== undefined) candidates.push(candidate(log, li, audit[idHit]!, idHit, true));
    for (const ai of index.near(log.model, log.time_ms, windowMs + log.precision_ms)) {
      if (ai === idHit) continue;
      const c = candidate(log, li, audit[ai]!, ai, false);
      if (c.model !== 'differs' && c.gap <= windowMs) candidates.push(c);
    }
  });
  for (const c of candidates) candidateCount[c.log]!++;
  candidates.sort((x, y) => compareCandidates(x, y, audit));
  const logTaken = new Array<boolean>(logs.length).fill(false);
  const auditTaken = new Array<boolean>(audit.length).fill(false);
  const pairs: MatchedIndexPair[] = [];
  for (const c of candidates) {
    if (logTaken[c.log] || auditTaken[c.audit]) continue;
    logTaken[c.log] = true;
    auditTaken[c.audit] = true;
    pairs.push({
      log: c.log,
      audit: c.audit,
      by: c.rank === RANK_REQUEST_ID ? 'request_id' : 'time_model',
      model_match: c.model,
      time_gap_ms: c.gap,
    });
  }
  pairs.sort((x, y) => x.log - y.log);
  const unmatchedLogs: Unmatched[] = [];
  logs.forEach((log, li) => {
    if (logTaken[li]) return;
    let reason: string;
    if (candidateCount[li]! > 0) {
      reason = `its ${candidateCount[li]} candidate audit row(s) matched other log rows better`;
    } else {
      const gap = index.nearestGap(log);
      reason =
        gap === null
          ? `no audit row with model ${log.model} in range`
          : `nearest audit row with model ${log.model} is ${formatDuration(gap)} away (window ±${formatDuration(windowMs)})`;
    }
    unmatchedLogs.push({ log: li, reason });
  });
  const unmatchedAudit = audit.map((_, i) => i).filter((i) => !auditTaken[i]);
  return { pairs, unmatchedLogs, unmatchedAudit };
}
