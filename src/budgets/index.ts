/**
 * Budgets (DESIGN.md §9, issue 11): period-to-date spend per budget, warn thresholds, and for
 * `action: block` a gate that holds under concurrency. Budgets are not a sink: spend reaches a
 * budget exactly once, through the reservation `check()` hands out (`settle(record)`).
 *
 * Spend = the audit log's period-to-date sum at start (so it survives restarts) + the real cost of
 * every settled request in scope since. Money is BigInt nanos; another currency is converted with
 * `fx:` when a rate exists.
 *
 * Gate: a request in scope of a block budget reserves the most it can cost (src/budgets/bound.ts,
 * priced by `PriceBook.maxCost`), and is admitted only while spent + reserved + its bound ≤ limit.
 * So however many requests race, the real spend stays within the limit as long as each real cost
 * is within its bound. A body too large to read cannot be bounded: it is refused ('unmeterable').
 * A block budget whose period spend cannot be read at start refuses to start (fail closed).
 */
import type { BudgetConfig, FxRate } from '../config/schema.js';
import { DEFAULTS } from '../config/types.js';
import { TokenmeterError } from '../errors.js';
import type { Logger } from '../log.js';
import { parseDecimal, unitsToNanos } from '../pricing/money.js';
import type { BoundingPriceBook } from '../pricing/types.js';
import type { RequestRecord } from '../record.js';
import type { RequestStart } from '../sinks/types.js';
import { requestBound } from './bound.js';
import { BudgetLedger, ratioOf, utcDay, type Hold } from './ledger.js';
import {
  noFxMessage,
  tooCostlyMessage,
  unmeterableMessage,
  usedUpMessage,
  type BoundDetail,
} from './messages.js';
import type {
  BudgetBlock,
  BudgetDecision,
  BudgetGate,
  BudgetRequest,
  BudgetReservation,
  BudgetStatus,
  SharedBudgetLedger,
  SharedHold,
  SpendFilter,
} from './types.js';
import { assertTimeZone } from './window.js';

export type {
  BudgetDecision,
  BudgetGate,
  BudgetRequest,
  BudgetReservation,
  BudgetStatus,
  SharedBudgetLedger,
  SharedHold,
  SharedVerdict,
  SpendFilter,
} from './types.js';
export { periodWindow, type Period, type PeriodWindow } from './window.js';
export { requestBound, IMAGE_INPUT_TOKENS, type RequestBound } from './bound.js';
/** SQLite GLOB semantics, the same as the audit log's `request_model GLOB ?` (src/glob.ts). */
export { globToRegExp } from '../glob.js';

export type SpendQuery = (filter: SpendFilter) => Array<{ currency: string; cost_nanos: bigint }>;

export interface BudgetsOptions {
  budgets: BudgetConfig[];
  /** Period-to-date spend from the audit log (its `querySpend`), injected. Model is a SQLite GLOB. */
  spend: SpendQuery;
  /**
   * Prices the bound a block budget reserves. The runtime always passes it; without it (the
   * `tokenmeter budgets` report) block budgets reserve nothing and only block once used up.
   */
  priceBook?: BoundingPriceBook;
  /** `fx:` rates: spend and bounds in another currency are converted with them. */
  fx?: readonly FxRate[];
  /** `limits.max_request_body`, named in the message that refuses an unreadable body. */
  maxRequestBodyBytes?: number;
  /**
   * Fleet mode (docs/fleet.md, Shared budgets): block budgets also reserve in the fleet's books.
   * Absent for a single tokenmeter, whose gate stays synchronous.
   */
  shared?: SharedBudgetLedger;
  now?: () => number;
  log: Logger;
}

export interface Budgets extends BudgetGate {
  /** Cheap (no I/O, a few BigInt operations per budget): read at scrape time for the gauges. */
  status(): BudgetStatus[];
}

type Blocked = BudgetBlock;

/**
 * Default `on_unreachable` of a shared block budget: `local`. A fleet Postgres outage must not
 * become an outage of every app's LLM traffic (telemetry never breaks the app, DESIGN.md §12);
 * each host still enforces the limit against its own spend meanwhile. `block` is for hard caps.
 */
const DEFAULT_ON_UNREACHABLE = 'local';

/** A request's share in the fleet's books: settled after the local one, once the reserve answered. */
class SharedShare {
  reserved = false;
  pending: Promise<unknown> | undefined;

  constructor(
    readonly ledger: SharedBudgetLedger,
    readonly id: string,
    readonly holds: ReadonlyArray<{ ledger: BudgetLedger; shared: SharedHold }>,
  ) {}

  settle(record: RequestRecord): void {
    const costs = this.holds.map(({ ledger: b, shared }) => ({ hold: shared, cost: costIn(b, record) }));
    // Settle after the reserve answered (a client that left mid-reserve ends the request first).
    const go = () => this.ledger.settle(this.id, this.reserved, costs);
    if (this.pending) void this.pending.then(go);
    else go();
  }
}

/** The record's real cost in b's currency, 0n when it does not count there or is unpriced. */
function costIn(b: BudgetLedger, record: RequestRecord): bigint {
  if (record.cost_nanos === null || record.currency === null || !b.counts(record)) return 0n;
  return b.inOwnCurrency(BigInt(record.cost_nanos), record.currency, utcDay(record.ts_start)) ?? 0n;
}

/** Releases the request's holds and adds its real cost to the budgets it counts towards, once. */
class Reservation implements BudgetReservation {
  private settled = false;

  constructor(
    private readonly holds: Hold[],
    private readonly countsTowards: BudgetLedger[],
    private readonly now: () => number,
    private readonly shared?: SharedShare,
  ) {}

  settle(record: RequestRecord): void {
    // The meter settles exactly once; a flag on the handle (not an id set) makes a second call harmless.
    if (this.settled) return;
    this.settled = true;
    for (const h of this.holds) h.ledger.release(h);
    const t = this.now();
    for (const b of this.countsTowards) b.add(record, t);
    this.shared?.settle(record);
  }
}

export function createBudgets(opts: BudgetsOptions): Budgets {
  const now = opts.now ?? Date.now;
  const log = opts.log;
  const fx = opts.fx ?? [];
  const maxBody = opts.maxRequestBodyBytes ?? DEFAULTS.limits.maxRequestBody;
  const t0 = now();

  const ledgers = opts.budgets.map((config) => {
    const timezone = config.timezone ?? 'UTC';
    try {
      assertTimeZone(timezone);
    } catch (err) {
      throw new TokenmeterError('CONFIG_INVALID', `budget "${config.name}": ${(err as Error).message}`);
    }
    const limit = unitsToNanos(parseDecimal(config.limit));
    const ledger = new BudgetLedger(config, timezone, limit, t0, fx, log);
    ledger.setBase(readBase(ledger, t0));
    ledger.evaluate();
    return ledger;
  });

  function readBase(b: BudgetLedger, toMs: number): Array<{ currency: string; cost_nanos: bigint }> {
    const { app, model, upstream } = b.config.scope;
    try {
      return opts.spend({ app, model, upstream, fromMs: b.window.start, toMs });
    } catch (err) {
      const error = err instanceof Error ? err.message : String(err);
      if (b.blocks) {
        // Fail closed: a fresh full limit would let a spent budget be spent again.
        throw new TokenmeterError(
          'DB_ERROR',
          `budget "${b.name}" (action: block) cannot start: its period-to-date spend could not be read ` +
            `from the audit log (${error.replace(/\s+/g, ' ')}). Starting from zero could spend it twice. ` +
            `Fix the audit DB (path, permissions, disk, --db) or set action: alert on this budget to start anyway.`,
        );
      }
      log.error('budget could not read period-to-date spend from the audit log; counting from now', {
        budget: b.name,
        error,
      });
      return [];
    }
  }

  /** The bound of one request in each gating budget's currency, computed once per request. */
  function bound(start: RequestStart, request: BudgetRequest): BoundOf | undefined {
    if (!opts.priceBook) return undefined;
    const r = requestBound(request);
    const cost = opts.priceBook.maxCost({
      model: start.request_model ?? undefined,
      upstream: start.upstream,
      app: start.app,
      operation: start.operation,
      at: new Date(start.ts_start),
      inputTokens: r.inputTokens,
      requestedOutputTokens: r.requestedOutputTokens,
      choices: r.choices,
    });
    return { cost, inputTokens: r.inputTokens };
  }

  /** This request's bound in b's currency, 0n when unknown (unpriced), or why it cannot be counted. */
  function boundIn(b: BudgetLedger, of: BoundOf | undefined, start: RequestStart): BoundDetail | Blocked {
    const zero: BoundDetail = { amount: 0n, inputTokens: 0, outputTokens: 0, outputFrom: 'default' };
    if (!of) return zero;
    const { cost } = of;
    if (cost.cost_nanos === null) {
      // Unpriced spend is never counted (cost NULL), so a reservation could never be settled
      // against it; the unpriced-model alert is what watches this hole.
      log.once(`budget:${b.name}:unpriced-bound`, 'warn', 'budget reserves nothing for unpriced requests', {
        budget: b.name,
        model: (start.request_model ?? '').slice(0, 100),
        reason: cost.reason.slice(0, 200),
      });
      return zero;
    }
    const amount = b.inOwnCurrency(cost.cost_nanos, cost.currency, utcDay(start.ts_start));
    if (amount === null) {
      const model = (start.request_model ?? 'unknown').slice(0, 100);
      return {
        blocked: true,
        budget: b.name,
        reason: 'exhausted',
        message: noFxMessage(b, model, cost.currency),
      };
    }
    return {
      amount,
      inputTokens: of.inputTokens,
      outputTokens: cost.output_tokens,
      outputFrom: cost.output_from,
    };
  }

  /** Admits the request against every gating budget (reserving its bound on each), or says which blocks it. */
  function admit(gates: BudgetLedger[], start: RequestStart, request: BudgetRequest): Hold[] | Blocked {
    for (const b of gates) {
      if (b.spent() + b.reserved >= b.limit)
        return { blocked: true, budget: b.name, reason: 'exhausted', message: usedUpMessage(b) };
    }
    if (request.bodyUnreadable) {
      const b = gates[0]!;
      return {
        blocked: true,
        budget: b.name,
        reason: 'unmeterable',
        message: unmeterableMessage(b, maxBody),
      };
    }
    const of = bound(start, request);
    const amounts: bigint[] = [];
    for (const b of gates) {
      const detail = boundIn(b, of, start);
      if ('blocked' in detail) return detail;
      if (b.spent() + b.reserved + detail.amount > b.limit)
        return { blocked: true, budget: b.name, reason: 'exhausted', message: tooCostlyMessage(b, detail) };
      amounts.push(detail.amount);
    }
    return gates.map((b, i) => b.hold(amounts[i]!));
  }

  /**
   * Fleet mode: admitted by this host's own view (holds taken), now also by the fleet's books. The
   * local holds stay until settle, so the host's view keeps counting its own requests in flight.
   */
  function reserveShared(
    shared: SharedBudgetLedger,
    start: RequestStart,
    holds: Hold[],
    countsTowards: BudgetLedger[],
  ): BudgetDecision {
    const share = new SharedShare(
      shared,
      start.id,
      holds.map((h) => ({ ledger: h.ledger, shared: sharedHold(h) })),
    );
    const reservation = new Reservation(holds, countsTowards, now, share);
    const pending = shared
      .reserve(
        start.id,
        share.holds.map((h) => h.shared),
      )
      .then((v): Blocked | undefined => {
        if (v.admitted) {
          share.reserved = v.reserved;
          return undefined;
        }
        return { blocked: true, budget: v.budget, reason: 'exhausted', message: v.message };
      })
      // The ledger never rejects by contract; if it did, this host's own view has admitted it.
      .catch(() => undefined);
    share.pending = pending;
    return { blocked: false, reservation, pending };
  }

  return {
    check(start: RequestStart, request: BudgetRequest): BudgetDecision {
      const t = now();
      // No allocation for a request in scope of no budget: the common case costs one scan.
      let gates: BudgetLedger[] | undefined;
      let countsTowards: BudgetLedger[] | undefined;
      for (const b of ledgers) {
        // Free endpoints (operation `other`: /v1/models, count_tokens, balance) are never gated.
        const gated = start.operation !== 'other' && b.gates(start);
        const counted = b.counts(start);
        if (!gated && !counted) continue;
        b.roll(t);
        if (gated) (gates ??= []).push(b);
        if (counted) (countsTowards ??= []).push(b);
      }
      if (!gates && !countsTowards) return { blocked: false };
      let holds: Hold[] = [];
      if (gates) {
        const admitted = admit(gates, start, request);
        if (!Array.isArray(admitted)) return admitted;
        holds = admitted;
      }
      if (opts.shared && holds.length > 0)
        return reserveShared(opts.shared, start, holds, countsTowards ?? []);
      return { blocked: false, reservation: new Reservation(holds, countsTowards ?? [], now) };
    },

    status(): BudgetStatus[] {
      const t = now();
      return ledgers.map((b) => statusOf(b, t));
    },
  };
}

function sharedHold(h: Hold): SharedHold {
  const b = h.ledger;
  return {
    budget: b.name,
    periodStart: b.window.start,
    periodEnd: b.window.end,
    periodKey: b.window.startDate,
    period: b.config.period,
    timezone: b.timezone,
    currency: b.currency,
    limit: b.limit,
    amount: h.amount,
    onUnreachable: b.config.on_unreachable ?? DEFAULT_ON_UNREACHABLE,
  };
}

interface BoundOf {
  cost: ReturnType<BoundingPriceBook['maxCost']>;
  inputTokens: number;
}

function statusOf(b: BudgetLedger, t: number): BudgetStatus {
  b.roll(t);
  const spent = b.spent();
  const length = b.window.end - b.window.start;
  // Linear projection; elapsed is floored at 1/24 of the period so the first minutes of a
  // period do not project absurd overspend from a single request.
  const elapsed = Math.max(t - b.window.start, Math.floor(length / 24), 1);
  const projected = (spent * BigInt(length)) / BigInt(elapsed);
  const ratio = ratioOf(spent, b.limit);
  const warnAt = [...b.config.warn_at].sort((x, y) => x - y);
  return {
    name: b.name,
    period: b.config.period,
    timezone: b.timezone,
    currency: b.currency,
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
    warn_at: warnAt,
    warnings_crossed: warnAt.filter((w) => ratio >= w),
    exceeded: ratio >= 1,
  };
}
