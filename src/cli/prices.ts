/**
 * `tokenmeter prices list|check|import` (DESIGN.md §2, §5.4): show the effective price table,
 * validate price files (file:line:field per problem, exit 1), import LiteLLM or one-api/new-api
 * price data into our YAML.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Command, Option } from 'commander';
import { ConfigError, formatProblem, TokenmeterError, UsageError, type SourceProblem } from '../errors.js';
import { loadSettings } from '../config/load.js';
import { loadPriceBook, matchWarnings, priceIdOf } from '../pricing/index.js';
import { importLitellm, importOneApi, importToYaml, type ImportResult } from '../pricing/import.js';
import { parsePriceTable, type PriceTable } from '../pricing/table.js';

export interface PricesCliIo {
  out(text: string): void;
  err(text: string): void;
  /** Where a failing command reports its exit code (default: process.exitCode). */
  setExitCode(code: number): void;
  /** Today as YYYY-MM-DD (imports stamp it as each entry's `date:`). */
  today(): string;
}

const PROCESS_IO: PricesCliIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  setExitCode: (c) => {
    process.exitCode = c;
  },
  today: () => new Date().toISOString().slice(0, 10),
};

export function register(program: Command, io: PricesCliIo = PROCESS_IO): Command {
  const prices = program
    .command('prices')
    .description('show, validate and import price tables (DESIGN.md §5)');

  prices
    .command('list')
    .description('show the effective price table: your files first, then the bundled presets, in match order')
    .option('--config <file>', 'config file whose prices:, presets: and multipliers apply (as for serve)')
    .option('--prices <file...>', 'price files (YAML or JSON) overlaying the presets; later files win', [])
    .option('--no-presets', 'leave out the bundled presets under prices/')
    .option(
      '--upstream-url <url>',
      'only the tables that apply to an upstream at this URL (host-scoped presets)',
    )
    .addOption(new Option('--format <format>', 'output format').choices(['table', 'json']).default('table'))
    .action(
      (opts: {
        config?: string;
        prices: string[];
        presets: boolean;
        upstreamUrl?: string;
        format: 'table' | 'json';
      }) => {
        let url: URL | undefined;
        if (opts.upstreamUrl !== undefined) {
          try {
            url = new URL(opts.upstreamUrl);
          } catch {
            throw new UsageError(`--upstream-url: not a URL: ${opts.upstreamUrl}`);
          }
        }
        // The same precedence as serve (flag > env > config file > default), so the table shown is
        // the one serve would use.
        const settings = loadSettings(
          {
            config: opts.config,
            prices: opts.prices.length > 0 ? opts.prices : undefined,
            presets: opts.presets ? undefined : false,
          },
          process.env,
          process.cwd(),
        );
        const book = loadPriceBook({
          files: settings.priceFiles,
          presets: settings.presets,
          multipliers: settings.multipliers,
          upstreams: url ? [{ name: 'default', url, trustReportedCost: false }] : [],
        });
        // Without an upstream, show every table (a host-scoped one says which hosts it is for).
        const tables = url ? book.tablesFor('default') : book.allTables();
        const rows = tables.flatMap(({ table, origin }) => priceRows(table, origin));
        if (opts.format === 'json') io.out(JSON.stringify(rows, null, 2) + '\n');
        else io.out(renderTable(rows));
      },
    );

  prices
    .command('check')
    .description('validate price files; prints file:line:col: field: message per problem and exits 1 if any')
    .argument('<file...>', 'price files (YAML or JSON)')
    .action((files: string[]) => {
      const problems: SourceProblem[] = [];
      const tables: PriceTable[] = [];
      let entries = 0;
      for (const file of files) {
        let text: string;
        try {
          text = readFileSync(file, 'utf8');
        } catch (err) {
          problems.push({
            file,
            message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
          });
          continue;
        }
        const parsed = parsePriceTable(text, file);
        problems.push(...parsed.problems);
        entries += parsed.table?.entries.length ?? 0;
        if (parsed.table) tables.push(parsed.table);
      }
      if (problems.length > 0) {
        for (const p of problems) io.err(formatProblem(p) + '\n');
        io.err(`${problems.length} problem${problems.length === 1 ? '' : 's'} in ${files.length} file(s)\n`);
        io.setExitCode(1);
        return;
      }
      // Valid, but a name could match in a surprising way: warnings on stderr, exit 0 (docs/pricing.md).
      const warnings = matchWarnings(tables);
      for (const w of warnings) io.err(`${w.file}:${w.line}: ${w.field}: warning: ${w.message}\n`);
      io.out(
        `ok: ${files.length} file(s), ${entries} price entries` +
          (warnings.length > 0 ? `, ${warnings.length} warning${warnings.length === 1 ? '' : 's'}` : '') +
          '\n',
      );
    });

  prices
    .command('import')
    .description(
      'convert a LiteLLM model_prices_and_context_window.json or a one-api/new-api ratio JSON to our YAML',
    )
    .addOption(
      new Option('--from <format>', 'source format').choices(['litellm', 'oneapi']).makeOptionMandatory(),
    )
    .argument('<file>', 'the JSON file to import')
    .option('--out <file>', 'write the YAML here instead of stdout')
    .option('--currency <code>', 'currency of the imported prices', 'USD')
    .option(
      '--group-ratio <ratio>',
      'one-api group ratio to fold into every price (default: group_ratio.default or 1)',
    )
    .option('--group <name>', 'one-api group whose ratio (from group_ratio in the file) to fold in')
    .action(
      (
        file: string,
        opts: {
          from: 'litellm' | 'oneapi';
          out?: string;
          currency: string;
          groupRatio?: string;
          group?: string;
        },
      ) =>
        guarded(io, () => {
          if (!/^[A-Z]{3}$/.test(opts.currency))
            throw new UsageError(
              `--currency: expected an ISO 4217 code such as USD or CNY, got ${opts.currency}`,
            );
          if (opts.groupRatio !== undefined && !/^\d+(\.\d+)?$/.test(opts.groupRatio))
            throw new UsageError(
              `--group-ratio: expected a non-negative decimal such as 0.8, got ${opts.groupRatio}`,
            );
          let json: unknown;
          try {
            json = JSON.parse(readFileSync(file, 'utf8'));
          } catch (err) {
            throw new UsageError(
              `${file}: cannot read JSON: ${err instanceof Error ? err.message : String(err)}`,
            );
          }
          let result: ImportResult;
          try {
            result =
              opts.from === 'litellm'
                ? importLitellm(json, { currency: opts.currency, source: basename(file) })
                : importOneApi(json, {
                    currency: opts.currency,
                    groupRatio: opts.groupRatio,
                    group: opts.group,
                    source: basename(file),
                  });
          } catch (err) {
            throw new UsageError(`${file}: ${err instanceof Error ? err.message : String(err)}`);
          }
          const yaml = importToYaml(result, io.today());
          // The output must pass `prices check`; if it does not, that is our bug, not the user's file.
          const check = parsePriceTable(yaml, opts.out ?? '<import>');
          if (check.problems.length > 0) throw new ConfigError(check.problems, 'PRICES_INVALID');
          if (opts.out) writeFileSync(opts.out, yaml);
          else io.out(yaml);
          io.err(
            `imported ${result.entries.length} model(s), skipped ${result.skipped.length}` +
              (opts.out ? `; wrote ${opts.out}` : '') +
              '\n',
          );
        }),
    );
  return prices;
}

/**
 * Runs an action so a failure prints its reason (every file:line problem of a ConfigError, else one
 * line) and sets the exit code (2 for bad usage, 1 otherwise) instead of a stack trace.
 */
function guarded(io: PricesCliIo, action: () => void): void {
  try {
    action();
  } catch (err) {
    if (!(err instanceof TokenmeterError)) throw err;
    const text = err instanceof ConfigError ? err.problems.map(formatProblem).join('\n') : err.message;
    io.err(`tokenmeter: ${text}\n`);
    io.setExitCode(err.exitCode);
  }
}

export interface PriceRow {
  price_id: string;
  origin: 'user' | 'preset';
  file: string;
  hosts: string[] | null;
  model: string;
  upstream: string | null;
  currency: string;
  unit: string;
  input: string;
  output: string;
  cache_read: string;
  cache_write: string;
  cache_write_1h: string;
  reasoning: string;
  per_request: string | null;
  per_image: string | null;
  effective_from: string | null;
  source: string | null;
  /** Other exact names of the model (`aliases:`). */
  aliases: string[];
  /** Input-length tiers: above this many prompt tokens, the whole request at these prices. */
  tiers: Array<{
    above_input_tokens: number;
    input: string;
    output: string;
    cache_read: string;
    cache_write: string;
    cache_write_1h: string;
    reasoning: string;
  }>;
}

/** One table's entries as `prices list --format json` rows (the console's prices page shares it). */
export function priceRows(table: PriceTable, origin: 'user' | 'preset'): PriceRow[] {
  return table.entries.map((e) => ({
    price_id: priceIdOf(table, e),
    origin,
    file: table.file,
    hosts: table.hosts ?? null,
    model: e.model,
    upstream: e.upstream ?? null,
    currency: e.currency,
    unit: table.unit,
    input: e.prices.input.toFixed(),
    output: e.prices.output.toFixed(),
    cache_read: e.prices.cache_read.toFixed(),
    cache_write: e.prices.cache_write.toFixed(),
    cache_write_1h: e.prices.cache_write_1h.toFixed(),
    reasoning: e.prices.reasoning.toFixed(),
    per_request: e.prices.per_request?.toFixed() ?? null,
    per_image: e.prices.per_image?.toFixed() ?? null,
    effective_from: e.effectiveFrom ?? null,
    source: e.source ?? null,
    aliases: e.aliases,
    tiers: e.tiers.map((t) => ({
      above_input_tokens: t.aboveInputTokens,
      input: t.prices.input.toFixed(),
      output: t.prices.output.toFixed(),
      cache_read: t.prices.cache_read.toFixed(),
      cache_write: t.prices.cache_write.toFixed(),
      cache_write_1h: t.prices.cache_write_1h.toFixed(),
      reasoning: t.prices.reasoning.toFixed(),
    })),
  }));
}

function renderTable(rows: PriceRow[]): string {
  const header = [
    'PRICE_ID',
    'SCOPE',
    'CUR',
    'UNIT',
    'INPUT',
    'OUTPUT',
    'CACHE_READ',
    'CACHE_WRITE',
    'CW_1H',
    'REASONING',
    'FEES',
    'ALSO',
  ];
  const body = rows.map((r) => [
    r.price_id,
    r.hosts ? r.hosts.join(',') : r.origin === 'user' ? 'user' : 'all',
    r.currency,
    r.unit,
    r.input,
    r.output,
    r.cache_read,
    r.cache_write,
    r.cache_write_1h,
    r.reasoning,
    [r.per_request ? `${r.per_request}/request` : '', r.per_image ? `${r.per_image}/image` : '']
      .filter(Boolean)
      .join(' '),
    [
      ...r.aliases.map((a) => `alias ${a}`),
      ...r.tiers.map((t) => `>${t.above_input_tokens}: ${t.input}/${t.output}`),
    ].join(' '),
  ]);
  const all = [header, ...body];
  const widths = header.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  const lines = all.map((row) =>
    row
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd(),
  );
  return lines.join('\n') + `\n${rows.length} entries\n`;
}
