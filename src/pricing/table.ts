/**
 * Price table files (DESIGN.md §5.1): parsing and validation with file:line:field messages.
 * YAML and JSON are read by the same `yaml` parser (JSON is YAML 1.2), so both get line numbers.
 * Money values are taken from the literal text in the file, never via a JS float.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml';
import { ConfigError, type SourceProblem } from '../errors.js';
import { globToRegExp, isGlob as isGlobPattern } from '../glob.js';
import { Dec, parseDecimal } from './money.js';

export const PRICE_UNITS = { '1M': 1_000_000, '1K': 1_000 } as const;
export type PriceUnit = keyof typeof PRICE_UNITS;

/** Per-token-kind prices, per `unit` tokens, already resolved with the file's defaults (§5.1). */
export interface ResolvedPrices {
  input: Dec;
  output: Dec;
  cache_read: Dec;
  cache_write: Dec;
  cache_write_1h: Dec;
  reasoning: Dec;
  per_request: Dec | undefined;
  per_image: Dec | undefined;
}

/**
 * An input-length tier (`tiers:` of an entry): when a request's prompt — uncached input + cache
 * reads + cache writes — exceeds `aboveInputTokens`, the **whole request** is priced at this tier's
 * rates (how Anthropic's 1M-context and Gemini's > 200K pricing bill). docs/pricing.md.
 */
export interface PriceTier {
  aboveInputTokens: number;
  /** Resolved like an entry's prices; `per_request` / `per_image` are the entry's own. */
  prices: ResolvedPrices;
  written: Record<string, string>;
  line: number;
}

export interface PriceEntry {
  /** Exact model name or glob (SQLite GLOB syntax: `*`, `?`, `[...]`, `[^...]`; src/glob.ts). */
  model: string;
  isGlob: boolean;
  /** Other exact names of the same model (`aliases:`); never globs. */
  aliases: string[];
  upstream: string | undefined;
  currency: string;
  prices: ResolvedPrices;
  /** Input-length tiers, thresholds strictly increasing; empty when the entry has none. */
  tiers: PriceTier[];
  /** The values as written in the file (for `prices list` and for recomputing by hand). */
  written: Record<string, string>;
  /**
   * The model's documented maximum output tokens per request (`max_output_tokens`), when the entry
   * states it. Budgets use it to bound what a request without `max_tokens` can cost (docs/budgets.md).
   */
  maxOutputTokens: number | undefined;
  /** Epoch ms from which the entry is in force; undefined = always. */
  effectiveFromMs: number | undefined;
  effectiveFrom: string | undefined;
  source: string | undefined;
  date: string | undefined;
  note: string | undefined;
  line: number;
  matches(model: string): boolean;
}

export interface PriceTable {
  file: string;
  /** File basename, the first part of every `price_id`. */
  name: string;
  currency: string;
  unit: PriceUnit;
  cacheReadRatio: Dec | undefined;
  cacheWriteRatio: Dec | undefined;
  /** Upstream URL hosts this file applies to; undefined = every upstream. */
  hosts: string[] | undefined;
  entries: PriceEntry[];
}

const FILE_KEYS = new Set([
  'currency',
  'unit',
  'cache_read_ratio',
  'cache_write_ratio',
  'hosts',
  'prices',
  'source',
  'date',
  'note',
]);
/** Price fields of an entry, in the order they are written (the importers use the same list). */
export const MONEY_KEYS = [
  'input',
  'output',
  'cache_read',
  'cache_write',
  'cache_write_1h',
  'reasoning',
  'per_request',
  'per_image',
] as const;
const ENTRY_KEYS = new Set<string>([
  'model',
  'aliases',
  'upstream',
  'currency',
  ...MONEY_KEYS,
  'max_output_tokens',
  'tiers',
  'effective_from',
  'source',
  'date',
  'note',
]);
/** Price fields a tier may restate; fees (`per_request`, `per_image`) are the entry's. */
export const TIER_MONEY_KEYS = [
  'input',
  'output',
  'cache_read',
  'cache_write',
  'cache_write_1h',
  'reasoning',
] as const;
const TIER_KEYS = new Set<string>(['above_input_tokens', ...TIER_MONEY_KEYS]);
const CURRENCY = /^[A-Z]{3}$/;
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const HOST = /^[A-Za-z0-9.-]+(:\d+)?$/;

/** Reads and validates a price file; throws ConfigError (code PRICES_INVALID) listing every problem. */
export function loadPriceTable(file: string): PriceTable {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(
      [{ file, message: `cannot read price file: ${(err as NodeJS.ErrnoException).code ?? String(err)}` }],
      'PRICES_INVALID',
    );
  }
  const { table, problems } = parsePriceTable(text, file);
  if (!table || problems.length > 0) throw new ConfigError(problems, 'PRICES_INVALID');
  return table;
}

/** Parses price-file text; `table` is set only when there are no problems. */
export function parsePriceTable(
  text: string,
  file: string,
): { table: PriceTable | undefined; problems: SourceProblem[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const problems: SourceProblem[] = [];
  const at = (node: Node | null | undefined | Pair['key']): { line?: number; column?: number } => {
    const range = (node as Node | null | undefined)?.range;
    if (!range) return {};
    const pos = lines.linePos(range[0]);
    return { line: pos.line, column: pos.col };
  };
  const problem = (node: Node | null | undefined | Pair['key'], field: string | undefined, message: string) =>
    problems.push({ file, ...at(node), ...(field ? { field } : {}), message });

  for (const e of doc.errors) {
    const pos = lines.linePos(e.pos[0]);
    problems.push({ file, line: pos.line, column: pos.col, message: e.message.split('\n')[0] ?? e.message });
  }
  if (problems.length > 0) return { table: undefined, problems };

  const root = doc.contents;
  if (!isMap(root)) {
    problem(root, undefined, 'a price file is a mapping with `currency`, `unit` and `prices:`');
    return { table: undefined, problems };
  }

  const fileFields = fields(root, FILE_KEYS, '', problem);
  const currency = stringField(fileFields.get('currency'), 'currency', problem);
  if (currency === undefined && !fileFields.has('currency'))
    problem(root, 'currency', 'required: the currency of the prices in this file, e.g. CNY or USD');
  else if (currency !== undefined && !CURRENCY.test(currency))
    problem(fileFields.get('currency')?.value, 'currency', `expected an ISO 4217 code such as CNY or USD`);

  let unit: PriceUnit = '1M';
  const unitPair = fileFields.get('unit');
  if (unitPair) {
    const u = scalarText(unitPair.value);
    if (u === '1M' || u === '1K') unit = u;
    else
      problem(unitPair.value, 'unit', `unknown unit ${JSON.stringify(u)}: use 1M or 1K (tokens per price)`);
  }
  const cacheReadRatio = decimalField(fileFields.get('cache_read_ratio'), 'cache_read_ratio', problem);
  const cacheWriteRatio = decimalField(fileFields.get('cache_write_ratio'), 'cache_write_ratio', problem);
  stringField(fileFields.get('source'), 'source', problem);
  stringField(fileFields.get('note'), 'note', problem);
  dateField(fileFields.get('date'), 'date', problem);

  let hosts: string[] | undefined;
  const hostsPair = fileFields.get('hosts');
  if (hostsPair) {
    if (!isSeq(hostsPair.value) || hostsPair.value.items.length === 0) {
      problem(hostsPair.value ?? hostsPair.key, 'hosts', 'expected a non-empty list of host names');
    } else {
      hosts = [];
      for (const item of hostsPair.value.items) {
        const h = isScalar(item) ? scalarText(item) : undefined;
        if (h === undefined || !HOST.test(h))
          problem(item as Node, 'hosts', 'expected a host name such as cailag.xin');
        else hosts.push(h.toLowerCase());
      }
    }
  }

  const entries: PriceEntry[] = [];
  const pricesPair = fileFields.get('prices');
  if (!pricesPair)
    problem(root, 'prices', 'required: a list of price entries (it may be empty: `prices: []`)');
  else if (!isSeq(pricesPair.value)) problem(pricesPair.value ?? pricesPair.key, 'prices', 'expected a list');
  else {
    const seen = new Map<string, number>();
    pricesPair.value.items.forEach((item, index) => {
      const prefix = `prices[${index}]`;
      if (!isMap(item)) {
        problem(item as Node, prefix, 'expected a mapping with model, input and output');
        return;
      }
      const before = problems.length;
      const entry = parseEntry(item, prefix, {
        currency: currency ?? 'XXX',
        cacheReadRatio,
        cacheWriteRatio,
        line: at(item).line ?? 0,
        lineOf: (node) => at(node).line ?? 0,
        problem,
      });
      if (!entry || problems.length > before) return;
      const key = `${entry.model}\u0000${entry.upstream ?? ''}\u0000${entry.effectiveFrom ?? ''}`;
      const first = seen.get(key);
      if (first !== undefined) {
        problem(
          item,
          `${prefix}.model`,
          `duplicate entry: same model, upstream and effective_from as line ${first}`,
        );
        return;
      }
      seen.set(key, entry.line);
      entries.push(entry);
    });
  }

  if (problems.length > 0 || currency === undefined) return { table: undefined, problems };
  return {
    table: { file, name: basename(file), currency, unit, cacheReadRatio, cacheWriteRatio, hosts, entries },
    problems,
  };
}

type Problem = (
  node: Node | null | undefined | Pair['key'],
  field: string | undefined,
  message: string,
) => void;

function parseEntry(
  map: YAMLMap,
  prefix: string,
  ctx: {
    currency: string;
    cacheReadRatio: Dec | undefined;
    cacheWriteRatio: Dec | undefined;
    line: number;
    lineOf: (node: Node) => number;
    problem: Problem;
  },
): PriceEntry | undefined {
  const { problem } = ctx;
  const f = fields(map, ENTRY_KEYS, `${prefix}.`, problem);
  const model = stringField(f.get('model'), `${prefix}.model`, problem);
  if (!f.has('model'))
    problem(map, `${prefix}.model`, 'required: an exact model name or a glob such as claude-*');
  else if (model !== undefined && model.trim() === '')
    problem(f.get('model')?.value, `${prefix}.model`, 'empty');

  const upstream = stringField(f.get('upstream'), `${prefix}.upstream`, problem);
  if (upstream !== undefined && !NAME.test(upstream))
    problem(f.get('upstream')?.value, `${prefix}.upstream`, 'an upstream name: letters, digits, _ . -');
  const currency = stringField(f.get('currency'), `${prefix}.currency`, problem);
  if (currency !== undefined && !CURRENCY.test(currency))
    problem(f.get('currency')?.value, `${prefix}.currency`, 'expected an ISO 4217 code such as CNY or USD');

  const written: Record<string, string> = {};
  const money: Partial<Record<(typeof MONEY_KEYS)[number], Dec>> = {};
  for (const k of MONEY_KEYS) {
    const v = decimalField(f.get(k), `${prefix}.${k}`, problem);
    if (v !== undefined) {
      money[k] = v;
      written[k] = v.toFixed();
    }
  }
  for (const k of ['input', 'output'] as const)
    if (!f.has(k)) problem(map, `${prefix}.${k}`, `required: price per unit of ${k} tokens (0 if free)`);

  const maxOutputTokens = tokenCountField(f.get('max_output_tokens'), `${prefix}.max_output_tokens`, problem);
  const effective = dateField(f.get('effective_from'), `${prefix}.effective_from`, problem);
  const source = stringField(f.get('source'), `${prefix}.source`, problem);
  const date = dateField(f.get('date'), `${prefix}.date`, problem);
  const note = stringField(f.get('note'), `${prefix}.note`, problem);
  // SQLite GLOB syntax, like every model glob (src/glob.ts).
  const isGlob = model !== undefined && isGlobPattern(model);
  const aliases = aliasesField(f.get('aliases'), `${prefix}.aliases`, model, isGlob, problem);
  const tiers = tiersField(f.get('tiers'), `${prefix}.tiers`, ctx);

  if (model === undefined || money.input === undefined || money.output === undefined) return undefined;
  const matcher = isGlob ? globToRegExp(model) : undefined;
  return {
    model,
    isGlob,
    aliases,
    upstream,
    currency: currency ?? ctx.currency,
    prices: resolvePrices(money as Money & { input: Dec; output: Dec }, ctx, money),
    // A tier restates token prices only: the entry's fees apply at every tier.
    tiers: tiers.map((t) => ({
      ...t,
      prices: { ...t.prices, per_request: money.per_request, per_image: money.per_image },
    })),
    written,
    maxOutputTokens,
    effectiveFromMs: effective?.ms,
    effectiveFrom: effective?.text,
    source,
    date: date?.text,
    note,
    line: ctx.line,
    matches: matcher ? (m) => matcher.test(m) : (m) => m === model,
  };
}

type Money = Partial<Record<(typeof MONEY_KEYS)[number], Dec>>;

/**
 * §5.1 defaults: cache prices follow the file's ratios when set, else the input price; a 1h cache
 * write costs what a 5m write costs unless stated; reasoning is billed as output. Fees come from
 * `fees` (a tier's fees are its entry's).
 */
function resolvePrices(
  money: Money & { input: Dec; output: Dec },
  ctx: { cacheReadRatio: Dec | undefined; cacheWriteRatio: Dec | undefined },
  fees: Money,
): ResolvedPrices {
  const { input, output } = money;
  const cacheRead = money.cache_read ?? (ctx.cacheReadRatio ? input.times(ctx.cacheReadRatio) : input);
  const cacheWrite = money.cache_write ?? (ctx.cacheWriteRatio ? input.times(ctx.cacheWriteRatio) : input);
  return {
    input,
    output,
    cache_read: cacheRead,
    cache_write: cacheWrite,
    cache_write_1h: money.cache_write_1h ?? cacheWrite,
    reasoning: money.reasoning ?? output,
    per_request: fees.per_request,
    per_image: fees.per_image,
  };
}

/** `aliases:` — other exact names of the model (not globs, not the model itself, no repeats). */
function aliasesField(
  pair: Pair | undefined,
  field: string,
  model: string | undefined,
  isGlob: boolean,
  problem: Problem,
): string[] {
  if (!pair) return [];
  if (!isSeq(pair.value)) {
    problem((pair.value as Node | null) ?? pair.key, field, 'expected a list of model names');
    return [];
  }
  if (isGlob) {
    problem(pair.key, field, 'a glob entry cannot have aliases: list the names as entries or widen the glob');
    return [];
  }
  const out: string[] = [];
  pair.value.items.forEach((item, i) => {
    const name = isScalar(item) ? scalarText(item) : undefined;
    const at = `${field}[${i}]`;
    if (name === undefined || name.trim() === '') problem(item as Node, at, 'expected a model name');
    else if (isGlobPattern(name))
      problem(item as Node, at, 'an alias is an exact name (no * ? [): use a glob entry instead');
    else if (name === model) problem(item as Node, at, 'the alias is the model name itself');
    else if (out.includes(name)) problem(item as Node, at, `repeated alias ${name}`);
    else out.push(name);
  });
  return out;
}

/** `tiers:` — input-length tiers, each `above_input_tokens` plus restated prices, thresholds increasing. */
function tiersField(
  pair: Pair | undefined,
  field: string,
  ctx: {
    cacheReadRatio: Dec | undefined;
    cacheWriteRatio: Dec | undefined;
    lineOf: (node: Node) => number;
    problem: Problem;
  },
): PriceTier[] {
  if (!pair) return [];
  const { problem } = ctx;
  if (!isSeq(pair.value) || pair.value.items.length === 0) {
    problem((pair.value as Node | null) ?? pair.key, field, 'expected a non-empty list of tiers');
    return [];
  }
  const tiers: PriceTier[] = [];
  let previous: number | undefined;
  pair.value.items.forEach((item, i) => {
    const prefix = `${field}[${i}]`;
    if (!isMap(item)) {
      problem(item as Node, prefix, 'expected a mapping with above_input_tokens, input and output');
      return;
    }
    const f = fields(item, TIER_KEYS, `${prefix}.`, problem);
    const above = tokenCountField(f.get('above_input_tokens'), `${prefix}.above_input_tokens`, problem);
    if (!f.has('above_input_tokens'))
      problem(
        item,
        `${prefix}.above_input_tokens`,
        'required: the prompt size (tokens) above which this tier applies',
      );
    else if (above !== undefined && previous !== undefined && above <= previous)
      problem(
        f.get('above_input_tokens')?.value,
        `${prefix}.above_input_tokens`,
        `thresholds must increase: ${above} is not above the previous tier's ${previous}`,
      );
    const money: Money = {};
    const written: Record<string, string> = {};
    for (const k of TIER_MONEY_KEYS) {
      const v = decimalField(f.get(k), `${prefix}.${k}`, problem);
      if (v !== undefined) {
        money[k] = v;
        written[k] = v.toFixed();
      }
    }
    for (const k of ['input', 'output'] as const)
      if (!f.has(k)) problem(item, `${prefix}.${k}`, `required: the tier's price per unit of ${k} tokens`);
    if (above !== undefined) previous = Math.max(previous ?? 0, above);
    if (above === undefined || money.input === undefined || money.output === undefined) return;
    tiers.push({
      aboveInputTokens: above,
      prices: resolvePrices(money as Money & { input: Dec; output: Dec }, ctx, {}),
      written,
      line: ctx.lineOf(item),
    });
  });
  return tiers;
}

/** Collects a mapping's pairs by key, reporting unknown and non-string keys. */
function fields(map: YAMLMap, allowed: Set<string>, prefix: string, problem: Problem): Map<string, Pair> {
  const out = new Map<string, Pair>();
  for (const pair of map.items as Pair[]) {
    const key = isScalar(pair.key) ? String(pair.key.value) : undefined;
    if (key === undefined) {
      problem(pair.key, prefix || undefined, 'keys must be plain names');
      continue;
    }
    if (!allowed.has(key)) {
      const hint = nearest(key, allowed);
      problem(pair.key, `${prefix}${key}`, `unknown key${hint ? ` (did you mean ${hint}?)` : ''}`);
      continue;
    }
    out.set(key, pair);
  }
  return out;
}

function nearest(key: string, allowed: Set<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const a of allowed) {
    const d = editDistance(key, a);
    if (d < bestDistance) {
      best = a;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

/** The literal text of a scalar: a plain number keeps the digits as written (`source`), not a float. */
function scalarText(node: unknown): string | undefined {
  if (!isScalar(node)) return undefined;
  if (typeof node.value === 'string') return node.value;
  if (typeof node.value === 'number') return node.source ?? String(node.value);
  return undefined;
}

function stringField(pair: Pair | undefined, field: string, problem: Problem): string | undefined {
  if (!pair) return undefined;
  if (!isScalar(pair.value) || typeof pair.value.value !== 'string') {
    problem((pair.value as Node | null) ?? pair.key, field, 'expected text');
    return undefined;
  }
  return oneByte(pair.value.value);
}

/**
 * A flat one-byte copy of `s` when every character fits in one (nearly always), else `s`. A YAML
 * scalar is a slice of its file's text, and a file with one non-Latin-1 character (a Chinese
 * comment) is a two-byte string in V8: every value cut from it is two-byte too. One such value in
 * a record (the currency, the price id) made the whole audit row's JSON two-byte, twice the bytes
 * to join, send to the writer thread and parse there (issue 11, docs/benchmarks.md).
 */
export function oneByte(s: string): string {
  // eslint-disable-next-line no-control-regex
  return /^[\u0000-\u00ff]*$/.test(s) ? Buffer.from(s, 'latin1').toString('latin1') : s;
}

function decimalField(pair: Pair | undefined, field: string, problem: Problem): Dec | undefined {
  if (!pair) return undefined;
  const node = pair.value as Node | null;
  const text =
    isScalar(node) && (typeof node.value === 'number' || typeof node.value === 'string')
      ? scalarText(node)
      : undefined;
  if (text === undefined) {
    problem(node ?? pair.key, field, 'expected a number such as 0.81');
    return undefined;
  }
  let value: Dec;
  try {
    value = parseDecimal(text);
  } catch {
    problem(node, field, `expected a number such as 0.81, got ${JSON.stringify(text)}`);
    return undefined;
  }
  if (value.isNegative() && !value.isZero()) {
    problem(node, field, `must not be negative (got ${text})`);
    return undefined;
  }
  return value.abs();
}

/** Tokens a model can produce at most per request: a positive whole number of plausible size. */
const MAX_TOKEN_COUNT = 100_000_000;

function tokenCountField(pair: Pair | undefined, field: string, problem: Problem): number | undefined {
  if (!pair) return undefined;
  const node = pair.value as Node | null;
  const value = isScalar(node) ? node.value : undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > MAX_TOKEN_COUNT) {
    problem(
      node ?? pair.key,
      field,
      `expected a positive whole number of tokens such as 16384 (at most ${MAX_TOKEN_COUNT})`,
    );
    return undefined;
  }
  return value;
}

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;
const DATETIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

/** YYYY-MM-DD (midnight UTC) or a full ISO 8601 date-time with a zone. */
function dateField(
  pair: Pair | undefined,
  field: string,
  problem: Problem,
): { text: string; ms: number } | undefined {
  if (!pair) return undefined;
  const text = scalarText(pair.value);
  const bad = () =>
    problem(
      (pair.value as Node | null) ?? pair.key,
      field,
      'expected a date YYYY-MM-DD or an ISO 8601 date-time with a zone',
    );
  if (text === undefined) return void bad();
  const day = DAY.exec(text);
  if (day) {
    const ms = Date.UTC(Number(day[1]), Number(day[2]) - 1, Number(day[3]));
    const back = new Date(ms).toISOString().slice(0, 10);
    if (back !== text) {
      problem(pair.value as Node, field, `not a real date: ${text}`);
      return undefined;
    }
    return { text, ms };
  }
  if (DATETIME.test(text)) {
    const ms = Date.parse(text);
    if (Number.isFinite(ms)) return { text, ms };
  }
  return void bad();
}
