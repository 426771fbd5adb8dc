/**
 * The price book (DESIGN.md §5): finds the price entry in force for a request and computes its
 * exact cost. Pure after construction: no I/O, no clock (the request's start time is the query's).
 *
 *   cost = (Σ tokens_k × price_k / unit + requests × per_request + images × per_image) × Π multipliers
 *
 * rounded half-up to nanos once. See docs/pricing.md for the matching order.
 */
import type { Settings } from '../config/types.js';
import { globToRegExp, isGlob } from '../glob.js';
import type { Logger } from '../log.js';
import type { Operation, PriceMatchKind, Usage } from '../record.js';
import {
  Dec,
  divRoundHalfUp,
  NANOS_PER_UNIT,
  nanosToSafeNumber,
  parseDecimal,
  SCALE,
  scaledInteger,
  unitsToNanos,
} from './money.js';
import { normalizedNames, snapshotBase } from './match.js';
import {
  MONEY_KEYS,
  oneByte,
  PRICE_UNITS,
  type PriceEntry,
  type PriceTable,
  type PriceTier,
  type ResolvedPrices,
} from './table.js';
import type { BoundingPriceBook, MaxCostQuery, MaxCostResult, PriceQuery, PriceResult } from './types.js';

export interface PricedUpstream {
  name: string;
  url: URL;
  /** Exact decimal string, e.g. "0.8" (the upstream's own `multiplier:`). */
  multiplier?: string;
  trustReportedCost: boolean;
}

export type TableOrigin = 'user' | 'preset';

export interface BookTable {
  table: PriceTable;
  origin: TableOrigin;
}

/** One entry as matched for a request, with the table it came from. */
export interface PriceMatch {
  entry: PriceEntry;
  table: PriceTable;
  origin: TableOrigin;
  priceId: string;
  /** Which rule found the entry (docs/pricing.md "Matching"). */
  kind: PriceMatchKind;
}

interface EntryGroup {
  isGlob: boolean;
  upstream: string | undefined;
  /** Newest first; an undated entry sorts last (it is in force from the beginning of time). */
  history: PriceEntry[];
}

interface IndexedTable extends BookTable {
  groups: EntryGroup[];
  /** Exact model name → groups (file order). */
  byModel: Map<string, EntryGroup[]>;
  /** Exact alias → groups. */
  byAlias: Map<string, EntryGroup[]>;
  /** Lower-cased model names and aliases → groups (the normalized and snapshot rules). */
  byFolded: Map<string, EntryGroup[]>;
  globs: EntryGroup[];
}

/** The tables that apply to one upstream, each list in precedence order. */
interface ApplicableTables {
  user: IndexedTable[];
  presets: IndexedTable[];
}

export function priceIdOf(table: PriceTable, entry: PriceEntry): string {
  const scope = entry.upstream ? `[${entry.upstream}]` : '';
  return `${table.name}#${entry.model}${scope}@${entry.effectiveFrom ?? 'always'}`;
}

/**
 * `priceIdOf`, made once per entry (an entry is in one table) as a flat one-byte string: built per
 * request it was a concatenation the audit row's JSON had to flatten every time.
 */
const priceIds = new WeakMap<PriceEntry, string>();
function cachedPriceId(table: PriceTable, entry: PriceEntry): string {
  let id = priceIds.get(entry);
  if (id === undefined) {
    id = oneByte(priceIdOf(table, entry));
    priceIds.set(entry, id);
  }
  return id;
}

const MAX_UNPRICED_WARNINGS = 200;

/**
 * Output tokens assumed for a request that states no `max_tokens` when its price entry states no
 * `max_output_tokens`: 128 Ki, at least the documented maximum of every model family in the
 * bundled presets (GPT-5 128,000; Claude 3.7 Sonnet with its 128k beta; GLM-4.5+ up to 128K). A
 * bound that is too low would let concurrent requests overshoot a budget; docs/budgets.md.
 */
export const DEFAULT_MAX_OUTPUT_TOKENS = 131_072;

/** Operations that generate no output tokens: their bound is the input alone. */
const NO_OUTPUT: ReadonlySet<Operation> = new Set(['embeddings']);

/** Operations whose cost depends on output tokens: an unreported output count makes the cost unknown. */
const OUTPUT_BILLED: ReadonlySet<Operation> = new Set([
  'chat',
  'text_completion',
  'responses',
  'messages',
  'realtime',
  'other',
]);

/**
 * Operations whose tokens may be audio (priced apart from text, far higher): their audio part must
 * be reported, and price tables have no audio prices yet, so audio makes the cost unknown.
 */
const AUDIO_BILLED: ReadonlySet<Operation> = new Set(['realtime']);

/** An entry group that may price a model, with the table it is in and the rule that found it. */
interface Candidate {
  group: EntryGroup;
  table: IndexedTable;
  kind: PriceMatchKind;
}

/** A request's multiplier stack: the exact value, its text in the record, its scaled integer (or null). */
interface Multiplier {
  value: Dec;
  text: string;
  scaled: bigint | null;
  /** The multiplier as m × 10^-k in safe integers (`costNanosSmall`), or null. */
  small: SmallDecimal | null;
}

/** Model × upstream pairs whose candidate list is kept (then the cache starts over). */
const CANDIDATE_CACHE_MAX = 4096;

export class TablePriceBook implements BoundingPriceBook {
  private readonly user: IndexedTable[];
  private readonly presets: IndexedTable[];
  private readonly upstreams: Map<string, PricedUpstream>;
  /** Per configured upstream, the tables that apply to its host (computed once, not per request). */
  private readonly tablesByUpstream: Map<string, ApplicableTables>;
  /** For an upstream name that is not configured: only unscoped tables apply. */
  private readonly unscopedTables: ApplicableTables;
  private readonly unpricedWarned = new Set<string>();
  private readonly candidateCache = new Map<string, readonly Candidate[]>();
  private readonly multiplierCache = new Map<string, Multiplier>();
  /** Multiplier layers parsed once (§5.2): the upstream's own, `multipliers.upstream`, `.app`, `.model`. */
  private readonly ownMultipliers: Map<string, Dec>;
  private readonly upstreamMultipliers: Map<string, Dec>;
  private readonly appMultipliers: Map<string, Dec>;
  private readonly modelMultipliers: Array<{ pattern: string; exact: boolean; re: RegExp; value: Dec }>;

  constructor(
    /** User files in the order given: a later file overlays an earlier one. */
    userTables: PriceTable[],
    /** Preset files; host-scoped (gateway) files are tried before unscoped (reference) ones. */
    presetTables: PriceTable[],
    multipliers: Settings['multipliers'],
    upstreams: PricedUpstream[],
    private readonly log?: Logger,
  ) {
    this.user = [...userTables].reverse().map((t) => indexTable(t, 'user'));
    this.presets = [
      ...presetTables.filter((t) => t.hosts !== undefined),
      ...presetTables.filter((t) => t.hosts === undefined),
    ].map((t) => indexTable(t, 'preset'));
    this.upstreams = new Map(upstreams.map((u) => [u.name, u]));
    const applicableTo = (url: URL | undefined): ApplicableTables => ({
      user: this.user.filter((t) => appliesToHost(t.table, url)),
      presets: this.presets.filter((t) => appliesToHost(t.table, url)),
    });
    this.tablesByUpstream = new Map(upstreams.map((u) => [u.name, applicableTo(u.url)]));
    this.unscopedTables = applicableTo(undefined);

    const parsed = (record: Record<string, string>): Map<string, Dec> =>
      new Map(Object.entries(record).map(([key, value]) => [key, parseDecimal(value)]));
    this.ownMultipliers = new Map(
      upstreams.flatMap((u) => (u.multiplier === undefined ? [] : [[u.name, parseDecimal(u.multiplier)]])),
    );
    this.upstreamMultipliers = parsed(multipliers.upstream);
    this.appMultipliers = parsed(multipliers.app);
    const entries = Object.entries(multipliers.model);
    // Model keys are globs in SQLite GLOB syntax, like every model glob (src/glob.ts).
    this.modelMultipliers = [
      // Exact names first, then globs in the order written: the first that matches applies.
      ...entries.filter(([p]) => !isGlob(p)),
      ...entries.filter(([p]) => isGlob(p)),
    ].map(([pattern, value]) => ({
      pattern,
      exact: !isGlob(pattern),
      re: globToRegExp(pattern),
      value: parseDecimal(value),
    }));
  }

  /** The tables that apply to an upstream; an unconfigured name sees only unscoped tables. */
  private applicable(upstreamName: string | undefined): ApplicableTables {
    return (
      (upstreamName === undefined ? undefined : this.tablesByUpstream.get(upstreamName)) ??
      this.unscopedTables
    );
  }

  /** Every table, in precedence order (user files, gateway presets, reference presets). */
  allTables(): BookTable[] {
    return [...this.user, ...this.presets];
  }

  /** Tables that apply to an upstream, in precedence order (first wins). */
  tablesFor(upstreamName: string | undefined): BookTable[] {
    const { user, presets } = this.applicable(upstreamName);
    return [...user, ...presets];
  }

  /**
   * The entry in force for `model` on `upstreamName` at `at`. Precedence tiers, first non-empty
   * wins: user per-upstream entries, user generic entries, preset per-upstream, preset generic
   * (gateway presets for the upstream's host before the reference list). Within a tier the rules
   * run in order — exact name, `aliases:`, normalized (case, one `vendor/` prefix), dated snapshot
   * (a trailing date removed), glob — and within a rule the first table, then the first entry in
   * file order, wins. docs/pricing.md "Matching".
   */
  lookup(model: string, upstreamName: string, at: Date): PriceMatch | undefined {
    const atMs = at.getTime();
    for (const { group, table, kind } of this.candidates(model, upstreamName)) {
      const inForce = group.history.find((e) => e.effectiveFromMs === undefined || e.effectiveFromMs <= atMs);
      if (!inForce) continue;
      return {
        entry: inForce,
        table: table.table,
        origin: table.origin,
        priceId: cachedPriceId(table.table, inForce),
        kind,
      };
    }
    return undefined;
  }

  /**
   * Every entry group that could price `model` on `upstreamName`, in precedence order; the first
   * with an entry in force at the request's time wins (lookup). Cached per model and upstream: the
   * names, rules and tables do not change while serving, and the same few models repeat.
   */
  private candidates(model: string, upstreamName: string): readonly Candidate[] {
    const key = `${upstreamName}\u0000${model}`;
    const cached = this.candidateCache.get(key);
    if (cached !== undefined) return cached;
    const { user, presets } = this.applicable(upstreamName);
    // Compared with the entries' names lower-cased: `gpt-4o` also finds an entry written `GPT-4o`.
    const folded = normalizedNames(model);
    const bases = folded.flatMap((n) => {
      const base = snapshotBase(n);
      return base === undefined ? [] : [base];
    });
    const rules: Array<[PriceMatchKind, (t: IndexedTable) => EntryGroup[]]> = [
      ['exact', (t) => t.byModel.get(model) ?? []],
      ['alias', (t) => t.byAlias.get(model) ?? []],
      ['normalized', (t) => folded.flatMap((n) => t.byFolded.get(n) ?? [])],
      ['snapshot', (t) => bases.flatMap((n) => t.byFolded.get(n) ?? [])],
      [
        'glob',
        (t) =>
          t.globs.filter((g) => g.history[0]!.matches(model) || folded.some((n) => g.history[0]!.matches(n))),
      ],
    ];
    const found: Candidate[] = [];
    for (const applicable of [user, presets]) {
      for (const perUpstream of [true, false]) {
        for (const [kind, groupsOf] of rules) {
          for (const table of applicable) {
            for (const group of groupsOf(table)) {
              if (perUpstream ? group.upstream !== upstreamName : group.upstream !== undefined) continue;
              found.push({ group, table, kind });
            }
          }
        }
      }
    }
    // Bounded: model names come from traffic (capped at 256 characters each).
    if (this.candidateCache.size >= CANDIDATE_CACHE_MAX) this.candidateCache.clear();
    this.candidateCache.set(key, found);
    return found;
  }

  /** Product of the multiplier stack for a request (§5.2), as an exact decimal. */
  multiplierFor(upstreamName: string, app: string, model: string | undefined): Dec {
    return this.multiplierOf(upstreamName, app, model).value;
  }

  /**
   * The multiplier stack with its record text and scaled integer, per (upstream, app, model):
   * computed once, as the same few combinations repeat on every request. Bounded like the
   * candidate cache (app and model names come from traffic).
   */
  private multiplierOf(upstreamName: string, app: string, model: string | undefined): Multiplier {
    const key = `${upstreamName}\u0000${app}\u0000${model ?? ''}\u0000${model === undefined ? 0 : 1}`;
    const cached = this.multiplierCache.get(key);
    if (cached !== undefined) return cached;
    let value = new Dec(1);
    const own = this.ownMultipliers.get(upstreamName);
    if (own !== undefined) value = value.times(own);
    const byUpstream = this.upstreamMultipliers.get(upstreamName);
    if (byUpstream !== undefined) value = value.times(byUpstream);
    const byApp = this.appMultipliers.get(app);
    if (byApp !== undefined) value = value.times(byApp);
    if (model !== undefined) {
      const m = this.modelMultipliers.find((x) => (x.exact ? x.pattern === model : x.re.test(model)));
      if (m) value = value.times(m.value);
    }
    const made: Multiplier = {
      value,
      text: value.toFixed(),
      scaled: scaledInteger(value),
      small: smallDecimal(value),
    };
    if (this.multiplierCache.size >= CANDIDATE_CACHE_MAX) this.multiplierCache.clear();
    this.multiplierCache.set(key, made);
    return made;
  }

  price(query: PriceQuery): PriceResult {
    // Looked up once: both the computed cost and a currency-less reported cost need the entry.
    const match = query.model ? this.lookup(query.model, query.upstream, query.at) : undefined;
    const reported = this.reportedCost(query, match);
    const upstream = this.upstreams.get(query.upstream);
    const result = this.computed(query, match, reported?.currency);
    if (reported) {
      result.upstream_reported_cost_nanos = reported.nanos;
      result.upstream_reported_currency = reported.currency;
      if (upstream?.trustReportedCost && reported.currency !== null) {
        // §5.3: the gateway's own figure is the cost; our computation is kept beside it for drift.
        return {
          ...result,
          computed_cost_nanos: result.cost_nanos,
          computed_currency: result.currency,
          cost_nanos: reported.nanos,
          currency: reported.currency,
          cost_source: 'upstream',
          reason: undefined,
        };
      }
    }
    return result;
  }

  /**
   * The most a request can cost (a budget reserves it before the request is sent): every input
   * token at the highest input-side rate (input, cache read, cache writes: we cannot know which
   * the upstream will bill), every output token at the higher of output and reasoning, plus the
   * per-request fee and per-image price, times the multiplier stack, rounded up. Unpriced: null.
   */
  maxCost(query: MaxCostQuery): MaxCostResult {
    const model = query.model;
    if (model === undefined || model === '')
      return { cost_nanos: null, reason: 'the request names no model' };
    const match = this.lookup(model, query.upstream, query.at);
    if (!match)
      return { cost_nanos: null, reason: `no price entry for model ${model} on upstream ${query.upstream}` };
    // Every tier the prompt bound could reach may apply: bound with the highest of their rates.
    const reachable = [
      match.entry.prices,
      ...match.entry.tiers.filter((t) => query.inputTokens > t.aboveInputTokens).map((t) => t.prices),
    ];
    const p = match.entry.prices;
    const choices = query.choices ?? 1;
    const modelMax = match.entry.maxOutputTokens;
    let perChoice: number;
    let outputFrom: 'request' | 'model' | 'default';
    if (
      query.requestedOutputTokens !== undefined &&
      (modelMax === undefined || query.requestedOutputTokens <= modelMax)
    ) {
      perChoice = query.requestedOutputTokens;
      outputFrom = 'request';
    } else if (modelMax !== undefined) {
      // The provider rejects or clamps a max_tokens above the model's maximum.
      perChoice = modelMax;
      outputFrom = 'model';
    } else {
      perChoice = DEFAULT_MAX_OUTPUT_TOKENS;
      outputFrom = 'default';
    }
    const outputTokens = NO_OUTPUT.has(query.operation) ? 0 : perChoice * choices;
    const inputRate = maxDec(
      p.input,
      ...reachable.flatMap((r) => [r.input, r.cache_read, r.cache_write, r.cache_write_1h]),
    );
    const outputRate = maxDec(p.output, ...reachable.flatMap((r) => [r.output, r.reasoning]));
    const unit = new Dec(PRICE_UNITS[match.table.unit]);
    let units = new Dec(query.inputTokens)
      .times(inputRate)
      .plus(new Dec(outputTokens).times(outputRate))
      .div(unit);
    if (p.per_request !== undefined) units = units.plus(p.per_request);
    if (p.per_image !== undefined && query.operation === 'image_generation')
      units = units.plus(p.per_image.times(choices));
    units = units.times(this.multiplierFor(query.upstream, query.app, model));
    // A bound rounds up: rounding down could admit a request a nano over the limit.
    const nanos = BigInt(units.times(1_000_000_000).toDecimalPlaces(0, Dec.ROUND_CEIL).toFixed(0));
    return {
      cost_nanos: nanos,
      currency: match.entry.currency,
      price_id: match.priceId,
      output_tokens: outputTokens,
      output_from: outputFrom,
    };
  }

  private computed(
    query: PriceQuery,
    match: PriceMatch | undefined,
    reportedCurrency: string | null | undefined,
  ): PriceResult {
    const unpriced = (reason: string, extra: Partial<PriceResult> = {}): PriceResult => ({
      cost_nanos: null,
      currency: null,
      cost_source: 'unpriced',
      price_id: null,
      price_match: null,
      multiplier: null,
      upstream_reported_cost_nanos: null,
      upstream_reported_currency: reportedCurrency ?? null,
      reason,
      ...extra,
    });
    const model = query.model;
    if (model === undefined || model === '') return unpriced('unpriced: the request names no model');
    if (!match) {
      this.warnUnpriced(query.upstream, model);
      return unpriced(`unpriced: no price entry for model ${model} on upstream ${query.upstream}`);
    }
    const multiplier = this.multiplierOf(query.upstream, query.app, model);
    const tier = tierFor(match.entry, query.usage);
    const which = {
      price_id: tier ? `${match.priceId}>${tier.aboveInputTokens}` : match.priceId,
      price_match: match.kind,
      multiplier: multiplier.text,
    };
    // Safe JS integers when every figure fits (nearly always), BigInt when it does not, decimal.js
    // for prices or multipliers with more than 18 decimals: the same nanos on every path.
    const small =
      multiplier.small === null
        ? null
        : costNanosSmall(match, query.usage, query.operation, multiplier.small);
    if (small !== null && 'reason' in small) return unpriced(small.reason, which);
    const exact =
      small !== null || multiplier.scaled === null
        ? null
        : costNanosScaled(match, query.usage, query.operation, multiplier.scaled);
    let nanos: number | null;
    if (small !== null) nanos = small.nanos;
    else if (exact !== null) {
      if ('reason' in exact) return unpriced(exact.reason, which);
      nanos = nanosToSafeNumber(exact.nanos);
    } else {
      const base = costInUnits(match, query.usage, query.operation);
      if ('reason' in base) return unpriced(base.reason, which);
      nanos = nanosToSafeNumber(unitsToNanos(base.units.times(multiplier.value)));
    }
    if (nanos === null) return unpriced('cost too large to store exactly', which);
    return {
      cost_nanos: nanos,
      currency: match.entry.currency,
      cost_source: 'computed',
      ...which,
      upstream_reported_cost_nanos: null,
      upstream_reported_currency: reportedCurrency ?? null,
    };
  }

  /**
   * Warns once per (upstream, model). log.once remembers every key, so the number of distinct
   * models warned about is capped: a client sending random model names cannot grow memory unbounded.
   */
  private warnUnpriced(upstream: string, model: string): void {
    const key = `${upstream}:${model}`;
    if (this.unpricedWarned.size >= MAX_UNPRICED_WARNINGS && !this.unpricedWarned.has(key)) {
      this.log?.once(
        'unpriced:more',
        'warn',
        `more than ${MAX_UNPRICED_WARNINGS} unpriced models: no more warnings`,
      );
      return;
    }
    this.unpricedWarned.add(key);
    this.log?.once(`unpriced:${key}`, 'warn', 'no price entry for model; its cost is unknown', {
      model,
      upstream,
    });
  }

  private reportedCost(
    query: PriceQuery,
    match: PriceMatch | undefined,
  ): { nanos: number | null; currency: string | null } | undefined {
    const stated = query.upstreamCost;
    if (!stated) return undefined;
    let nanos: number | null;
    try {
      nanos = nanosToSafeNumber(unitsToNanos(parseDecimal(stated.amount)));
    } catch {
      this.log?.once(
        `reported-cost:${query.upstream}`,
        'warn',
        'upstream reported a cost that is not a number',
        {
          upstream: query.upstream,
        },
      );
      return undefined;
    }
    // A gateway that states no currency bills in the currency of its price table (if we know it).
    const currency = stated.currency ?? match?.entry.currency ?? null;
    return { nanos, currency };
  }
}

/**
 * Σ tokens × price / unit + fees, before multipliers, or the reason it is unknown.
 * Missing ≠ zero (§4.2): an unreported input count (or output count, for operations that produce
 * output) makes the cost unknown. Cache, reasoning and image counts that were not reported are
 * "not reported, nothing billed": OpenAI-shaped usage without cache details has no cached tokens
 * to bill, and its `input` is then the whole prompt.
 */
export function costInUnits(
  match: Pick<PriceMatch, 'entry' | 'table'>,
  usage: Usage,
  operation: Operation,
): { units: Dec } | { reason: string } {
  const p = pricesFor(match.entry, usage);
  const problem = usageProblem(p, usage, operation);
  if (problem !== undefined) return { reason: problem };
  let perUnit = new Dec(0);
  billedTokens(usage, p.reasoning.equals(p.output), (tokens, key) => {
    perUnit = perUnit.plus(new Dec(tokens).times(p[key]));
  });
  let units = perUnit.div(new Dec(PRICE_UNITS[match.table.unit]));
  if (p.per_request !== undefined) units = units.plus(p.per_request.times(usage.requests ?? 1));
  if (p.per_image !== undefined && usage.images !== undefined)
    units = units.plus(p.per_image.times(usage.images));
  return { units };
}

/**
 * The cost in nanos with integer arithmetic (money.ts, `SCALE`): every token term and fee at its
 * scaled price, times the scaled multiplier, one half-up division. Null when a price or the
 * multiplier has more decimals than the scale holds, or a count is not a non-negative safe
 * integer: the caller then uses `costInUnits`.
 */
export function costNanosScaled(
  match: Pick<PriceMatch, 'entry' | 'table'>,
  usage: Usage,
  operation: Operation,
  multiplier: bigint,
): { nanos: bigint } | { reason: string } | null {
  const scaled = integerPrices(match, usage, operation, scaledPricesOf);
  if (scaled === null || 'reason' in scaled) return scaled;
  const unit = BigInt(PRICE_UNITS[match.table.unit]);
  // Everything in (currency units × unit × SCALE): token terms as they are, fees times the unit.
  let total = 0n;
  billedTokens(usage, scaled.reasoning === scaled.output, (tokens, key) => {
    total += BigInt(tokens) * scaled[key];
  });
  if (scaled.per_request !== undefined) total += scaled.per_request * BigInt(usage.requests ?? 1) * unit;
  if (scaled.per_image !== undefined && usage.images !== undefined)
    total += scaled.per_image * BigInt(usage.images) * unit;
  return { nanos: divRoundHalfUp(total * multiplier * NANOS_PER_UNIT, unit * SCALE * SCALE) };
}

/**
 * The entry's prices in an integer form (`convert`) for a usage the integer paths can price; the
 * reason when the usage cannot be priced at all; null when a count or a price does not fit, and
 * the caller takes the next path.
 */
function integerPrices<T extends object>(
  match: Pick<PriceMatch, 'entry'>,
  usage: Usage,
  operation: Operation,
  convert: (p: ResolvedPrices) => T | null,
): T | { reason: string } | null {
  if (!countsAreNaturals(usage)) return null;
  const p = pricesFor(match.entry, usage);
  const converted = convert(p);
  if (converted === null) return null;
  const problem = usageProblem(p, usage, operation);
  return problem === undefined ? converted : { reason: problem };
}

/**
 * `costNanosScaled` in JS numbers, for the common case where every figure fits: prices and the
 * multiplier as safe integers at their own decimal exponent (price = m × 10^-k), every product and
 * sum a safe integer, one half-up rounding done on integers. Exact, so the same nanos as the
 * BigInt path (test/pricing/exact.test.ts checks both against decimal.js on random tables); null
 * whenever a figure does not fit, and the caller takes the BigInt path. Issue 11: the BigInt path
 * cost ≈ 1 µs and 700 bytes of garbage per request.
 */
export function costNanosSmall(
  match: Pick<PriceMatch, 'entry' | 'table'>,
  usage: Usage,
  operation: Operation,
  multiplier: SmallDecimal,
): { nanos: number } | { reason: string } | null {
  const s = integerPrices(match, usage, operation, smallPricesOf);
  if (s === null || 'reason' in s) return s;
  const unit = PRICE_UNITS[match.table.unit];
  // In (currency units × unit × 10^s.k). A product over 2^53 is inexact, but then so large that
  // the sum and `scaled` fail the safe-integer check below: an inexact figure never gets through.
  let total = 0;
  billedTokens(usage, s.reasoning === s.output, (tokens, key) => {
    total += tokens * s[key];
  });
  if (s.per_request !== undefined) total += s.per_request * (usage.requests ?? 1) * unit;
  if (s.per_image !== undefined && usage.images !== undefined) total += s.per_image * usage.images * unit;
  const scaled = total * multiplier.m;
  if (!Number.isSafeInteger(scaled)) return null;
  // nanos = scaled × 10^9 / (unit × 10^(s.k + multiplier.k)), rounded half-up.
  const shift = 9 - s.k - multiplier.k - UNIT_DIGITS[match.table.unit];
  if (shift >= 0) {
    const nanos = scaled * 10 ** shift;
    return Number.isSafeInteger(nanos) ? { nanos } : null;
  }
  if (shift < -15) return null;
  const d = 10 ** -shift;
  const r = scaled % d;
  return { nanos: (scaled - r) / d + (2 * r >= d ? 1 : 0) };
}

/** log10 of each price unit. */
const UNIT_DIGITS: Record<keyof typeof PRICE_UNITS, number> = { '1M': 6, '1K': 3 };

/** A non-negative decimal as m × 10^-k with m a safe integer. */
export interface SmallDecimal {
  m: number;
  k: number;
}

export function smallDecimal(d: Dec, k = d.decimalPlaces()): SmallDecimal | null {
  if (d.isNegative() || !d.isFinite() || k > 15 || d.decimalPlaces() > k) return null;
  const m = Number(d.times(new Dec(10).pow(k)).toFixed(0));
  return Number.isSafeInteger(m) ? { m, k } : null;
}

type SmallPrices = Record<TokenPrice, number> & { k: number; per_request?: number; per_image?: number };

/** Per resolved price list: its prices as safe integers at one exponent, or null. */
const smallPrices = new WeakMap<ResolvedPrices, SmallPrices | null>();

function smallPricesOf(p: ResolvedPrices): SmallPrices | null {
  let s = smallPrices.get(p);
  if (s !== undefined) return s;
  // One exponent for the whole list: the most decimals any of its prices has.
  const k = Math.max(...MONEY_KEYS.map((f) => p[f]?.decimalPlaces() ?? 0));
  const prices = convertPrices(p, (d) => smallDecimal(d, k)?.m ?? null);
  s = prices === null ? null : { ...prices, k };
  smallPrices.set(p, s);
  return s;
}

/** A resolved price list with every price converted, or null when one of them cannot be. */
function convertPrices<T>(
  p: ResolvedPrices,
  convert: (d: Dec) => T | null,
): (Record<TokenPrice, T> & { per_request?: T; per_image?: T }) | null {
  const out: Partial<Record<(typeof MONEY_KEYS)[number], T>> = {};
  for (const f of MONEY_KEYS) {
    const d = p[f];
    if (d === undefined) continue;
    const v = convert(d);
    if (v === null) return null;
    out[f] = v;
  }
  return out as Record<TokenPrice, T> & { per_request?: T; per_image?: T };
}

/**
 * Every count is a non-negative safe integer, as decoders and estimates give them (BigInt needs
 * integers; the rounding assumes a non-negative sum). Anything else takes the decimal path.
 */
function countsAreNaturals(u: Usage): boolean {
  return (
    natural(u.input) &&
    natural(u.output) &&
    natural(u.cacheRead) &&
    natural(u.cacheWrite) &&
    natural(u.cacheWrite1h) &&
    natural(u.reasoning) &&
    natural(u.audio) &&
    natural(u.images) &&
    natural(u.requests)
  );
}

const natural = (v: number | undefined): boolean => v === undefined || (Number.isSafeInteger(v) && v >= 0);

/** Why a usage cannot be priced (unknown is not zero, §5.1), or undefined when it can. */
function usageProblem(p: ResolvedPrices, usage: Usage, operation: Operation): string | undefined {
  const perImageOnly = operation === 'image_generation' && p.per_image !== undefined;
  const missing: string[] = [];
  if (perImageOnly) {
    if (usage.images === undefined) missing.push('images');
  } else {
    if (usage.input === undefined) missing.push('input');
    if (usage.output === undefined && OUTPUT_BILLED.has(operation)) missing.push('output');
  }
  if (AUDIO_BILLED.has(operation) && usage.audio === undefined) missing.push('audio/text split');
  if (missing.length > 0) {
    const any = Object.values(usage).some((v) => v !== undefined);
    return any ? `usage incomplete: ${missing.join(', ')} not reported` : 'usage missing';
  }
  // Never priced as text: audio costs several times more per token (e.g. gpt-realtime $32 vs $4
  // per 1M input). Unknown is not zero, and a wrong figure is worse than none.
  if (usage.audio !== undefined && usage.audio > 0)
    return `unpriced token kind: ${usage.audio} audio tokens (price tables have no audio prices)`;
  const cacheWrite = usage.cacheWrite ?? usage.cacheWrite1h;
  if (cacheWrite !== undefined && usage.cacheWrite1h !== undefined && usage.cacheWrite1h > cacheWrite)
    return 'usage inconsistent: cache_write_1h exceeds cache_write';
  if (usage.reasoning !== undefined && usage.output !== undefined && usage.reasoning > usage.output)
    return 'usage inconsistent: reasoning exceeds output';
  return undefined;
}

type TokenPrice = 'input' | 'output' | 'cache_read' | 'cache_write' | 'cache_write_1h' | 'reasoning';

/** The token counts billed at each per-token price (non-zero ones only), for a valid usage. */
function billedTokens(
  usage: Usage,
  reasoningPricedAsOutput: boolean,
  bill: (tokens: number, price: TokenPrice) => void,
): void {
  const add = (tokens: number | undefined, price: TokenPrice): void => {
    if (tokens !== undefined && tokens !== 0) bill(tokens, price);
  };
  add(usage.input, 'input');
  add(usage.cacheRead, 'cache_read');
  const cacheWrite = usage.cacheWrite ?? usage.cacheWrite1h;
  if (cacheWrite !== undefined) {
    if (usage.cacheWrite1h === undefined) {
      // The TTL split is not reported (OpenAI-shaped usage, or Anthropic usage without a
      // `cache_creation` breakdown): every write is billed at the 5m `cache_write` price, the
      // default TTL. This is a choice, not "1h part = 0 tokens known".
      add(cacheWrite, 'cache_write');
    } else {
      add(cacheWrite - usage.cacheWrite1h, 'cache_write');
      add(usage.cacheWrite1h, 'cache_write_1h');
    }
  }
  if (usage.output !== undefined) {
    // Reasoning tokens are part of output: bill them separately only when their price differs.
    if (usage.reasoning !== undefined && !reasoningPricedAsOutput) {
      add(usage.output - usage.reasoning, 'output');
      add(usage.reasoning, 'reasoning');
    } else add(usage.output, 'output');
  }
}

type ScaledPrices = Record<TokenPrice, bigint> & { per_request?: bigint; per_image?: bigint };

/** Scaled prices per resolved price set (an entry's or a tier's), computed on first use. */
const scaledPrices = new WeakMap<ResolvedPrices, ScaledPrices | null>();

function scaledPricesOf(p: ResolvedPrices): ScaledPrices | null {
  let s = scaledPrices.get(p);
  if (s !== undefined) return s;
  s = convertPrices(p, scaledInteger);
  scaledPrices.set(p, s);
  return s;
}

/**
 * The input-length tier a request falls in: the one with the highest `above_input_tokens` that its
 * prompt — uncached input + cache reads + cache writes — exceeds; undefined below every tier.
 * Unreported cache counts add nothing (they are "not reported, nothing billed", as in the cost).
 */
export function tierFor(entry: PriceEntry, usage: Usage): PriceTier | undefined {
  if (entry.tiers.length === 0) return undefined;
  const cacheWrite = usage.cacheWrite ?? usage.cacheWrite1h;
  const prompt = [usage.input, usage.cacheRead, cacheWrite].reduce<number>(
    (sum, n) => (n === undefined ? sum : sum + n),
    0,
  );
  let found: PriceTier | undefined;
  for (const t of entry.tiers) if (prompt > t.aboveInputTokens) found = t;
  return found;
}

/** The prices a request pays: its tier's when it falls in one, else the entry's. */
export function pricesFor(entry: PriceEntry, usage: Usage): ResolvedPrices {
  return tierFor(entry, usage)?.prices ?? entry.prices;
}

function maxDec(first: Dec, ...rest: Dec[]): Dec {
  return rest.reduce((max, d) => (d.greaterThan(max) ? d : max), first);
}

function indexTable(table: PriceTable, origin: TableOrigin): IndexedTable {
  const groups: EntryGroup[] = [];
  const byKey = new Map<string, EntryGroup>();
  for (const entry of table.entries) {
    const key = `${entry.model}\u0000${entry.upstream ?? ''}`;
    let g = byKey.get(key);
    if (!g) {
      g = { isGlob: entry.isGlob, upstream: entry.upstream, history: [] };
      byKey.set(key, g);
      groups.push(g);
    }
    g.history.push(entry);
  }
  for (const g of groups)
    g.history.sort((a, b) => (b.effectiveFromMs ?? -Infinity) - (a.effectiveFromMs ?? -Infinity));
  const byModel = new Map<string, EntryGroup[]>();
  const byAlias = new Map<string, EntryGroup[]>();
  const byFolded = new Map<string, EntryGroup[]>();
  const add = (map: Map<string, EntryGroup[]>, name: string, g: EntryGroup) => {
    const list = map.get(name) ?? [];
    if (!list.includes(g)) list.push(g);
    map.set(name, list);
  };
  for (const g of groups) {
    if (g.isGlob) continue;
    const model = g.history[0]!.model;
    add(byModel, model, g);
    add(byFolded, model.toLowerCase(), g);
    // The aliases of every dated entry of a model name the whole history.
    for (const alias of g.history.flatMap((e) => e.aliases)) {
      add(byAlias, alias, g);
      add(byFolded, alias.toLowerCase(), g);
    }
  }
  return { table, origin, groups, byModel, byAlias, byFolded, globs: groups.filter((g) => g.isGlob) };
}

/** A host-scoped file applies to an upstream on that host or a subdomain of it. */
function appliesToHost(table: PriceTable, url: URL | undefined): boolean {
  if (table.hosts === undefined) return true;
  if (!url) return false;
  const hostname = url.hostname.toLowerCase();
  const host = url.host.toLowerCase();
  return table.hosts.some((h) => h === host || h === hostname || hostname.endsWith(`.${h}`));
}
