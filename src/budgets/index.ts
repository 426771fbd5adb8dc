/**
 * Budgets (DESIGN.md §9): period-to-date spend per budget, warn thresholds, and for
 * `action: block` a gate that rejects new requests in scope once the budget is used up.
 *
 * Spend = the audit log's period-to-date sum at start (so it survives restarts) + the cost of every
 * live record in scope since. Money is BigInt nanos throughout; a record in another currency than
 * the budget's is not added (no FX here; logged once).
 *
 * Reserve-then-settle: check() admits a request only while spent + reserved < limit, and reserves
 * an estimate for it; the record's real cost replaces the estimate when it arrives. So requests
 * racing for the last part of a budget can overshoot it by at most the estimates in flight when
 * it ran out (exactly: by one estimate, plus however much real costs exceed their estimates).
 * The estimate is the largest of the last ESTIMATE_WINDOW in-scope costs, or 1% of the limit
 * before any cost has been seen.
 */
import type { BudgetConfig } from '../config/schema.js';
import { TokenmeterError } from '../errors.js';
import { globToRegExp } from '../glob.js';
import type { Logger } from '../log.js';
import { formatNanos, nanosToUnits, parseDecimal, unitsToNanos } from '../pricing/money.js';
import type { RequestRecord } from '../record.js';
import type { MetricsSink } from '../sinks/metrics.js';
import type { RequestStart, Sink } from '../sinks/types.js';
import type { BudgetDecision, BudgetGate, BudgetReservation, BudgetStatus, SpendFilter } from './types.js';
import { assertTimeZone, periodWindow, type PeriodWindow } from './window.js';

export type { BudgetDecision, BudgetGate, BudgetReservation, BudgetStatus, SpendFilter } from './types.js';
export { periodWindow, type Period, type PeriodWindow } from './window.js';
/** SQLite GLOB semantics, the same as the audit log's `request_model GLOB ?` (src/glob.ts). */
export { globToRegExp } from '../glob.js';

export type SpendQuery = (filter: SpendFilter) => Array<{ currency: string; cost_nanos: bigint }>;

export interface BudgetsOptions {
  budgets: BudgetConfig[];
  /** Period-to-date spend from the audit log (its `querySpend`), injected. Model is a SQLite GLOB. */
  spend: SpendQuery;
  /**
   * Recent in-scope costs from the audit log (its `queryRecentCosts`), newest first: seeds the
   * reservation estimate at start so a restart does not fall back to the 1%-of-limit guess.
   */
  recentCosts?: (filter: SpendFilter, currency: string, limit: number) => bigint[];
  metrics?: Pick<MetricsSink, 'budget'>;
  now?: () => number;
  log: Logger;
}

export interface Budgets extends BudgetGate, Sink {
  status(): BudgetStatus[];
}

/** How far back the audit log is searched for recent costs to seed the estimate at start. */
const RECENT_COSTS_LOOKBACK_MS = 30 * 86_400_000;

/** How many recent in-scope costs the reservation estimate looks at. */
export const ESTIMATE_WINDOW = 20;
/** Estimate before any in-scope cost was seen: this fraction of the limit (1%). */
const DEFAULT_ESTIMATE_PER_MILLE = 10n;
/** Record ids remembered as already counted, so write() and settle() never count one twice. */
const COUNTED_IDS_CAP = 10_000;

interface BudgetState {
  config: BudgetConfig;
  timezone: string;
  modelRe?: RegExp;
  limit: bigint;
  window: PeriodWindow;
  /** Spend from the audit log for [window.start, baseTo). */
  base: bigint;
  /** Live records with ts_start >= baseTo in this window are added to `live`. */
  baseTo: number;
  live: bigint;
  /** In-flight reservations by request id. */
  pending: Map<string, bigint>;
  reserved: bigint;
  recentCosts: bigint[];
  warned: Set<number>;
  exceededLogged: boolean;
}

interface ScopeSubject {
  app: string;
  request_model: string | null;
  upstream: string;
}

function inScope(b: BudgetState, s: ScopeSubject): boolean {
  const scope = b.config.scope;
  if (scope.app !== undefined && scope.app !== s.app) return false;
  if (scope.upstream !== undefined && scope.upstream !== s.upstream) return false;
  // A model-scoped budget needs a known model (like SQL GLOB, which never matches NULL).
  if (b.modelRe && (s.request_model === null || !b.modelRe.test(s.request_model))) return false;
  return true;
}

function spentOf(b: BudgetState): bigint {
  return b.base + b.live;
}

function ratioOf(spent: bigint, limit: bigint): number {
  if (limit === 0n) return spent > 0n ? Number.POSITIVE_INFINITY : 0;
  return Number(spent) / Number(limit);
}

export function createBudgets(opts: BudgetsOptions): Budgets {
  const now = opts.now ?? Date.now;
  const log = opts.log;

  const states: BudgetState[] = opts.budgets.map((config) => {
    const timezone = config.timezone ?? 'UTC';
    try {
      assertTimeZone(timezone);
    } catch (err) {
      throw new TokenmeterError('CONFIG_INVALID', `budget "${config.name}": ${(err as Error).message}`);
    }
    const t = now();
    const window = periodWindow(config.period, timezone, t);
    const state: BudgetState = {
      config,
      timezone,
      modelRe: config.scope.model === undefined ? undefined : globToRegExp(config.scope.model),
      limit: unitsToNanos(parseDecimal(config.limit)),
      window,
      base: 0n,
      baseTo: t,
      live: 0n,
      pending: new Map(),
      reserved: 0n,
      recentCosts: [],
      warned: new Set(),
      exceededLogged: false,
    };
    state.base = loadBase(state, window.start, t);
    state.recentCosts = loadRecentCosts(state, t);
    return state;
  });

  function loadBase(b: BudgetState, fromMs: number, toMs: number): bigint {
    const { app, model, upstream } = b.config.scope;
    let rows: Array<{ currency: string; cost_nanos: bigint }>;
    try {
      rows = opts.spend({ app, model, upstream, fromMs, toMs });
    } catch (err) {
      // The proxy must start even with a broken DB; the budget then counts from now.
      log.error('budget could not read period-to-date spend from the audit log; counting from now', {
        budget: b.config.name,
        error: String(err),
      });
      return 0n;
    }
    let total = 0n;
    for (const r of rows) {
      if (r.currency === b.config.currency) total += BigInt(r.cost_nanos);
      else otherCurrency(b, r.currency);
    }
    return total;
  }

  function loadRecentCosts(b: BudgetState, nowMs: number): bigint[] {
    if (!opts.recentCosts) return [];
    const { app, model, upstream } = b.config.scope;
    try {
      // Newest first from the DB; the window keeps them oldest first.
      const filter = { app, model, upstream, fromMs: nowMs - RECENT_COSTS_LOOKBACK_MS, toMs: nowMs };
      return opts.recentCosts(filter, b.config.currency, ESTIMATE_WINDOW).reverse();
    } catch (err) {
      log.once('budgets:recent-costs', 'warn', 'budget estimate could not be seeded from the audit log', {
        error: String(err),
      });
      return [];
    }
  }

  function otherCurrency(b: BudgetState, currency: string): void {
    log.once(
      `budget:${b.config.name}:currency:${currency}`,
      'warn',
      'budget ignores spend in another currency',
      {
        budget: b.config.name,
        budget_currency: b.config.currency,
        currency,
      },
    );
  }

  /** Moves a budget to the period containing t (a new period starts from zero). */
  function roll(b: BudgetState, t: number): void {
    if (t < b.window.end) return;
    b.window = periodWindow(b.config.period, b.timezone, t);
    b.base = 0n;
    b.live = 0n;
    b.baseTo = b.window.start;
    // In-flight requests started in the old period; their costs belong there.
    b.pending.clear();
    b.reserved = 0n;
    b.warned.clear();
    b.exceededLogged = false;
    publish(b);
  }

  function publish(b: BudgetState): void {
    opts.metrics?.budget(b.config.name, b.config.currency, nanosToUnits(b.limit), nanosToUnits(spentOf(b)));
  }

  function evaluate(b: BudgetState): void {
    const spent = spentOf(b);
    const ratio = ratioOf(spent, b.limit);
    const fields = {
      budget: b.config.name,
      spent: formatNanos(spent, b.config.currency),
      limit: formatNanos(b.limit, b.config.currency),
      period_start: b.window.startDate,
    };
    for (const threshold of [...b.config.warn_at].sort((x, y) => x - y)) {
      if (ratio >= threshold && !b.warned.has(threshold)) {
        b.warned.add(threshold);
        log.warn('budget warning threshold reached', { ...fields, threshold });
      }
    }
    if (ratio >= 1 && !b.exceededLogged) {
      b.exceededLogged = true;
      log.warn(
        b.config.action === 'block' ? 'budget exhausted; blocking requests in scope' : 'budget exceeded',
        fields,
      );
    }
  }

  function estimate(b: BudgetState): bigint {
    if (b.recentCosts.length === 0) return (b.limit * DEFAULT_ESTIMATE_PER_MILLE) / 1000n;
    return b.recentCosts.reduce((max, c) => (c > max ? c : max));
  }

  function release(b: BudgetState, id: string): void {
    const r = b.pending.get(id);
    if (r === undefined) return;
    b.pending.delete(id);
    b.reserved -= r;
  }

  const counted = new Set<string>();

  /** Adds a finished record's cost to every budget in scope (once per record id) and drops its reservations. */
  function account(record: RequestRecord): void {
    if (counted.has(record.id)) return;
    counted.add(record.id);
    if (counted.size > COUNTED_IDS_CAP) counted.delete(counted.values().next().value as string);
    const t = now();
    for (const b of states) {
      roll(b, t);
      release(b, record.id);
      if (record.cost_nanos === null || record.currency === null) continue; // unpriced: unknown, not 0
      if (!inScope(b, record)) continue;
      if (record.ts_start < b.window.start || record.ts_start >= b.window.end || record.ts_start < b.baseTo)
        continue;
      if (record.currency !== b.config.currency) {
        otherCurrency(b, record.currency);
        continue;
      }
      const cost = BigInt(record.cost_nanos);
      b.live += cost;
      b.recentCosts.push(cost);
      if (b.recentCosts.length > ESTIMATE_WINDOW) b.recentCosts.shift();
      publish(b);
      evaluate(b);
    }
  }

  function blockedMessage(b: BudgetState): string {
    const cur = b.config.currency;
    const inFlight =
      b.reserved > 0n ? ` (+${formatNanos(b.reserved, cur)} reserved by requests in flight)` : '';
    return (
      `tokenmeter budget "${b.config.name}" is used up: ${formatNanos(spentOf(b), cur)} spent${inFlight} of ` +
      `${formatNanos(b.limit, cur)} this ${b.config.period} (since ${b.window.startDate}, ${b.timezone}). ` +
      `Requests in its scope are blocked until ${new Date(b.window.end).toISOString()}; ` +
      `raise the limit in the budgets: config to continue.`
    );
  }

  for (const b of states) {
    publish(b);
    evaluate(b);
  }

  return {
    name: 'budgets',

    check(start: RequestStart): BudgetDecision {
      const t = now();
      const gates = states.filter((b) => b.config.action === 'block' && inScope(b, start));
      if (gates.length === 0) return { blocked: false };
      for (const b of gates) {
        roll(b, t);
        if (spentOf(b) + b.reserved >= b.limit) {
          return { blocked: true, budget: b.config.name, message: blockedMessage(b) };
        }
      }
      for (const b of gates) {
        const amount = estimate(b);
        b.pending.set(start.id, amount);
        b.reserved += amount;
      }
      const reservation: BudgetReservation = {
        settle(record: RequestRecord) {
          // The record may carry a different id only if a caller misuses the seam; release ours anyway.
          for (const b of gates) release(b, start.id);
          account(record);
        },
      };
      return { blocked: false, reservation };
    },

    write(record: RequestRecord) {
      account(record);
    },

    async close() {},

    status(): BudgetStatus[] {
      const t = now();
      return states.map((b) => {
        roll(b, t);
        const spent = spentOf(b);
        const length = b.window.end - b.window.start;
        // Linear projection; elapsed is floored at 1/24 of the period so the first minutes of a
        // period do not project absurd overspend from a single request.
        const elapsed = Math.max(t - b.window.start, Math.floor(length / 24), 1);
        const projected = (spent * BigInt(length)) / BigInt(elapsed);
        const ratio = ratioOf(spent, b.limit);
        return {
          name: b.config.name,
          period: b.config.period,
          timezone: b.timezone,
          currency: b.config.currency,
          action: b.config.action,
          scope: { ...b.config.scope },
          period_start: b.window.start,
          period_end: b.window.end,
          period_start_date: b.window.startDate,
          limit_nanos: b.limit,
          spent_nanos: spent,
          reserved_nanos: b.reserved,
          ratio,
          projected_nanos: projected > spent ? projected : spent,
          warn_at: [...b.config.warn_at].sort((x, y) => x - y),
          warnings_crossed: [...b.config.warn_at].filter((w) => ratio >= w).sort((x, y) => x - y),
          exceeded: ratio >= 1,
        };
      });
    },
  };
}
