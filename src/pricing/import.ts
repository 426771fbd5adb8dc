/**
 * Importers for other projects' price data into our price-file YAML (DESIGN.md §5.4):
 * - LiteLLM's `model_prices_and_context_window.json` (USD per token).
 * - one-api / new-api ratio JSON: quota = (prompt + completion × completion_ratio) × model_ratio ×
 *   group_ratio, with 500,000 quota = $1, so ratio 1 = $0.002 / 1K = $2 / 1M tokens
 *   (songquanpeng/one-api relay/billing/ratio); new-api adds cache_ratio / create_cache_ratio
 *   (cached prompt tokens billed at ×cache_ratio) and model_price (a flat price per call).
 * Pure: JSON in, entries and YAML text out. Every number goes through exact decimals.
 */
import { Dec, parseDecimal } from './money.js';
import { MONEY_KEYS, TIER_MONEY_KEYS } from './table.js';

export interface ImportedEntry {
  model: string;
  input: Dec;
  output: Dec;
  cache_read?: Dec;
  cache_write?: Dec;
  cache_write_1h?: Dec;
  reasoning?: Dec;
  per_request?: Dec;
  /** Never set by the importers (neither source prices images per image); kept so MONEY_KEYS fits. */
  per_image?: Dec;
  /** The model's maximum output per request, when the source states it (LiteLLM does). */
  max_output_tokens?: number;
  /** Input-length tiers (LiteLLM `*_above_<N>k_tokens`), thresholds increasing. */
  tiers?: ImportedTier[];
  note?: string;
}

export interface ImportedTier {
  above_input_tokens: number;
  input: Dec;
  output: Dec;
  cache_read?: Dec;
  cache_write?: Dec;
  cache_write_1h?: Dec;
}

/** LiteLLM's tiered keys (`input_cost_per_token_above_200k_tokens` …) → our tier fields. */
const LITELLM_TIER_KEY =
  /^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|cache_creation_input_token_cost|cache_creation_input_token_cost_above_1hr)_above_(\d+)k_tokens$/;
const LITELLM_TIER_FIELD = {
  input_cost_per_token: 'input',
  output_cost_per_token: 'output',
  cache_read_input_token_cost: 'cache_read',
  cache_creation_input_token_cost: 'cache_write',
  cache_creation_input_token_cost_above_1hr: 'cache_write_1h',
} as const;

export interface ImportResult {
  currency: string;
  /** Where the data came from, written as each entry's `source:`. */
  source: string;
  entries: ImportedEntry[];
  skipped: Array<{ model: string; reason: string }>;
  /** Lines for the file's header comment. */
  notes: string[];
}

const PER_MILLION = new Dec(1_000_000);

/** LiteLLM modes that are billed per token and that tokenmeter meters. */
const LITELLM_MODES = new Set(['chat', 'completion', 'responses', 'embedding']);

export function importLitellm(json: unknown, opts: { currency?: string; source: string }): ImportResult {
  if (!isObject(json)) throw new Error('expected a JSON object of model name → price info (LiteLLM format)');
  const result: ImportResult = {
    currency: opts.currency ?? 'USD',
    source: opts.source,
    entries: [],
    skipped: [],
    notes: [
      'Imported from LiteLLM model_prices_and_context_window.json (USD per token × 1,000,000).',
      'Tiered prices (*_above_<N>k_tokens) become `tiers:` (the whole request at the tier above N K prompt tokens);',
      'per-character / per-second prices are not modelled.',
    ],
  };
  for (const [model, info] of Object.entries(json)) {
    if (model === 'sample_spec') continue;
    if (!isObject(info)) {
      result.skipped.push({ model, reason: 'not an object' });
      continue;
    }
    const mode = typeof info.mode === 'string' ? info.mode : 'chat';
    if (!LITELLM_MODES.has(mode)) {
      result.skipped.push({ model, reason: `mode ${mode} is not metered` });
      continue;
    }
    const perToken = (key: string): Dec | undefined | null => {
      const v = info[key];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'number' && typeof v !== 'string') return null;
      try {
        return parseDecimal(v).times(PER_MILLION);
      } catch {
        return null;
      }
    };
    const input = perToken('input_cost_per_token');
    let output = perToken('output_cost_per_token');
    if (output === undefined && mode === 'embedding') output = new Dec(0);
    if (input === undefined || input === null || output === undefined || output === null) {
      result.skipped.push({ model, reason: 'no per-token input/output price' });
      continue;
    }
    const entry: ImportedEntry = { model, input, output };
    const optional: Array<['cache_read' | 'cache_write' | 'cache_write_1h' | 'reasoning', string]> = [
      ['cache_read', 'cache_read_input_token_cost'],
      ['cache_write', 'cache_creation_input_token_cost'],
      ['cache_write_1h', 'cache_creation_input_token_cost_above_1hr'],
      ['reasoning', 'output_cost_per_reasoning_token'],
    ];
    let bad = false;
    for (const [ours, theirs] of optional) {
      const v = perToken(theirs);
      if (v === null) bad = true;
      else if (v !== undefined) entry[ours] = v;
    }
    if (bad) {
      result.skipped.push({ model, reason: 'a price field is not a number' });
      continue;
    }
    // LiteLLM states the documented output cap; budgets reserve it for requests without max_tokens.
    const maxOut = info.max_output_tokens;
    if (typeof maxOut === 'number' && Number.isSafeInteger(maxOut) && maxOut > 0)
      entry.max_output_tokens = maxOut;
    if (typeof info.input_cost_per_request === 'number')
      entry.per_request = parseDecimal(info.input_cost_per_request);
    const tiers = litellmTiers(info, entry);
    if (tiers === null) {
      result.skipped.push({ model, reason: 'a tier price is not a number' });
      continue;
    }
    if (tiers.length > 0) entry.tiers = tiers;
    result.entries.push(entry);
  }
  return result;
}

/**
 * LiteLLM's `*_above_<N>k_tokens` prices as tiers above N × 1000 prompt tokens; a tier that states
 * no input (or output) price keeps the base one. null when a tier price is not a number.
 */
function litellmTiers(info: Record<string, unknown>, base: ImportedEntry): ImportedTier[] | null {
  const byThreshold = new Map<number, Partial<ImportedTier>>();
  for (const [key, value] of Object.entries(info)) {
    const m = LITELLM_TIER_KEY.exec(key);
    if (!m || value === null || value === undefined) continue;
    if (typeof value !== 'number' && typeof value !== 'string') return null;
    let price: Dec;
    try {
      price = parseDecimal(value).times(PER_MILLION);
    } catch {
      return null;
    }
    const above = Number(m[2]) * 1000;
    const tier = byThreshold.get(above) ?? {};
    tier[LITELLM_TIER_FIELD[m[1] as keyof typeof LITELLM_TIER_FIELD]] = price;
    byThreshold.set(above, tier);
  }
  return [...byThreshold.entries()]
    .sort(([a], [b]) => a - b)
    .map(([above, t]) => ({
      ...t,
      above_input_tokens: above,
      input: t.input ?? base.input,
      output: t.output ?? base.output,
    }));
}

/** Reads a ratio map that may be an object or (one-api option export) a JSON string of one. */
function ratioMap(root: Record<string, unknown>, ...keys: string[]): Record<string, unknown> | undefined {
  for (const k of keys) {
    let v = root[k];
    if (typeof v === 'string') {
      try {
        v = JSON.parse(v);
      } catch {
        throw new Error(`${k} is a string but not JSON`);
      }
    }
    if (isObject(v)) return v;
  }
  return undefined;
}

export function importOneApi(
  json: unknown,
  opts: { currency?: string; groupRatio?: string; group?: string; source: string },
): ImportResult {
  if (!isObject(json)) throw new Error('expected a JSON object with model_ratio (one-api / new-api ratios)');
  const modelRatio =
    ratioMap(json, 'model_ratio', 'ModelRatio') ??
    // A bare ModelRatio option value: { "gpt-4o": 1.25, ... }.
    (Object.values(json).every((v) => typeof v === 'number') ? json : undefined);
  if (!modelRatio) throw new Error('no model_ratio (or ModelRatio) object found');
  const completionRatio = ratioMap(json, 'completion_ratio', 'CompletionRatio') ?? {};
  const cacheRatio = ratioMap(json, 'cache_ratio', 'CacheRatio') ?? {};
  const createCacheRatio = ratioMap(json, 'create_cache_ratio', 'CreateCacheRatio') ?? {};
  const modelPrice = ratioMap(json, 'model_price', 'ModelPrice') ?? {};
  const groupRatios = ratioMap(json, 'group_ratio', 'GroupRatio') ?? {};

  let group: Dec;
  let groupNote: string;
  if (opts.groupRatio !== undefined) {
    group = parseDecimal(opts.groupRatio);
    groupNote = `group ratio ${group.toFixed()} (from --group-ratio) is folded into every price`;
  } else {
    const name = opts.group ?? 'default';
    const g = groupRatios[name];
    if (g !== undefined && (typeof g === 'number' || typeof g === 'string')) {
      group = parseDecimal(g);
      groupNote = `group_ratio.${name} = ${group.toFixed()} is folded into every price`;
    } else {
      group = new Dec(1);
      groupNote = 'no group ratio given: group ratio 1 (pass --group-ratio to fold in yours)';
    }
  }
  const currency = opts.currency ?? 'USD';
  // 500,000 quota = 1 currency unit (one-api QuotaPerUnit), so ratio 1 = 2 units per 1M tokens.
  const perMillionAtRatio1 = new Dec(2);
  const result: ImportResult = {
    currency,
    source: opts.source,
    entries: [],
    skipped: [],
    notes: [
      'Imported from one-api / new-api ratios: quota = (prompt + completion × completion_ratio) × model_ratio × group_ratio;',
      `500,000 quota = 1 ${currency}, so model_ratio 1 = 2 ${currency} per 1M input tokens.`,
      groupNote + '.',
      'A model without a completion_ratio is taken at completion_ratio 1 (one-api has built-in defaults for some',
      'models that a ratio export does not contain: check output prices).',
    ],
  };
  const num = (v: unknown): Dec | undefined =>
    typeof v === 'number' || typeof v === 'string' ? parseDecimal(v) : undefined;
  const models = new Set([...Object.keys(modelRatio), ...Object.keys(modelPrice)]);
  for (const model of models) {
    try {
      const price = num(modelPrice[model]);
      const ratio = num(modelRatio[model]);
      if (ratio === undefined) {
        if (price === undefined) continue;
        // new-api fixed per-call price (in currency units, before the group ratio).
        result.entries.push({
          model,
          input: new Dec(0),
          output: new Dec(0),
          per_request: price.times(group),
          note: 'new-api model_price: a flat price per call',
        });
        continue;
      }
      const input = ratio.times(perMillionAtRatio1).times(group);
      const entry: ImportedEntry = {
        model,
        input,
        output: input.times(num(completionRatio[model]) ?? 1),
      };
      const cr = num(cacheRatio[model]);
      if (cr !== undefined) entry.cache_read = input.times(cr);
      const cw = num(createCacheRatio[model]);
      if (cw !== undefined) entry.cache_write = input.times(cw);
      result.entries.push(entry);
    } catch {
      result.skipped.push({ model, reason: 'a ratio is not a number' });
    }
  }
  return result;
}

/** Our price-file YAML for an import (it passes `prices check` and prices requests as the source does). */
export function importToYaml(result: ImportResult, date: string): string {
  const lines: string[] = [
    ...result.notes.map((n) => `# ${n}`),
    `# Generated by \`tokenmeter prices import\` on ${date}. Review before use.`,
  ];
  if (result.skipped.length > 0)
    lines.push(`# Skipped ${result.skipped.length} entries (not metered or not per-token).`);
  lines.push(
    `currency: ${result.currency}`,
    'unit: 1M',
    `source: ${JSON.stringify(result.source)}`,
    `date: ${date}`,
  );
  if (result.entries.length === 0) {
    lines.push('prices: []');
    return lines.join('\n') + '\n';
  }
  lines.push('prices:');
  for (const e of result.entries) {
    lines.push(`  - model: ${JSON.stringify(e.model)}`);
    for (const k of MONEY_KEYS) {
      const v = e[k];
      if (v !== undefined) lines.push(`    ${k}: ${v.toFixed()}`);
    }
    if (e.max_output_tokens !== undefined) lines.push(`    max_output_tokens: ${e.max_output_tokens}`);
    if (e.tiers && e.tiers.length > 0) {
      lines.push('    tiers:');
      for (const t of e.tiers) {
        lines.push(`      - above_input_tokens: ${t.above_input_tokens}`);
        for (const k of TIER_MONEY_KEYS) {
          const v = t[k as keyof ImportedTier] as Dec | undefined;
          if (v !== undefined) lines.push(`        ${k}: ${v.toFixed()}`);
        }
      }
    }
    lines.push(`    source: ${JSON.stringify(result.source)}`, `    date: ${date}`);
    if (e.note) lines.push(`    note: ${JSON.stringify(e.note)}`);
  }
  return lines.join('\n') + '\n';
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
