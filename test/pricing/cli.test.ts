import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { register, type PriceRow } from '../../src/cli/prices.js';
import { presetFiles } from '../../src/pricing/index.js';
import { parsePriceTable } from '../../src/pricing/table.js';
import { tempDir } from './helpers.js';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/pricing/${name}`, import.meta.url));

async function run(...args: string[]): Promise<{ out: string; err: string; code: number }> {
  let out = '';
  let err = '';
  let code = 0;
  const program = new Command('tokenmeter').exitOverride();
  program.configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
  register(program, {
    out: (s) => (out += s),
    err: (s) => (err += s),
    setExitCode: (c) => (code = c),
    today: () => '2026-11-23',
  });
  // commander applies exitOverride/configureOutput to subcommands created after the call.
  for (const c of program.commands) {
    c.exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
    for (const sub of c.commands)
      sub.exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
  }
  try {
    await program.parseAsync(['node', 'tokenmeter', ...args]);
  } catch (e) {
    const ce = e as { exitCode?: number; code?: string };
    if (ce.code === 'commander.helpDisplayed' || ce.code === 'commander.help') code = 0;
    else code = ce.exitCode ?? 1;
    if (ce.code === undefined || !String(ce.code).startsWith('commander.'))
      err += String((e as Error).message);
  }
  return { out, err, code };
}

describe('tokenmeter prices check', () => {
  it('passes on every bundled preset', async () => {
    const files = presetFiles();
    expect(files.map((f) => f.split('/').pop())).toEqual(
      expect.arrayContaining([
        'cailag.yaml',
        'cnaitoken.yaml',
        'cqtai.yaml',
        'dieyuyun.yaml',
        'reference.yaml',
      ]),
    );
    const r = await run('prices', 'check', ...files);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^ok: \d+ file\(s\), \d+ price entries\n$/);
  });

  it('prints file:line:col: field: message per problem and exits 1', async () => {
    const bad = fixture('bad-prices.yaml');
    const r = await run('prices', 'check', bad, fixture('valid-prices.json'));
    expect(r.code).toBe(1);
    const lines = r.err.trim().split('\n');
    expect(lines[0]).toBe(`${bad}:6:5: prices[0].ouput: unknown key (did you mean output?)`);
    expect(lines).toContain(`${bad}:8:12: prices[1].input: must not be negative (got -0.68)`);
    expect(lines.at(-1)).toBe('5 problems in 2 file(s)');
  });

  it('warns on ambiguous matching rules (exit 0): an alias shadowed by a model, one alias on two models', async () => {
    const dir = tempDir();
    const file = join(dir, 'ambiguous.yaml');
    writeFileSync(
      file,
      `currency: USD
prices:
  - { model: gpt-4o, input: 1, output: 1, aliases: [gpt-4o-mini, latest] }
  - { model: gpt-4o-mini, input: 1, output: 1, aliases: [latest] }
`,
    );
    const r = await run('prices', 'check', file);
    expect(r.code).toBe(0);
    expect(r.out).toBe('ok: 1 file(s), 2 price entries, 2 warnings\n');
    expect(r.err.trim().split('\n')).toEqual([
      `${file}:3: prices[0].aliases[0]: warning: alias gpt-4o-mini is the model of the entry at ambiguous.yaml:4, which always wins`,
      `${file}:4: prices[1].aliases[0]: warning: alias latest is also an alias of gpt-4o at ambiguous.yaml:3; the first wins`,
    ]);
  });
});

describe('tokenmeter prices list', () => {
  it('shows the tables that apply to an upstream URL in match order, as JSON', async () => {
    const r = await run('prices', 'list', '--upstream-url', 'https://cailag.xin/v1', '--format', 'json');
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.out) as PriceRow[];
    expect(rows[0]).toMatchObject({
      price_id: 'cailag.yaml#deepseek-chat@always',
      currency: 'CNY',
      input: '0.81',
      output: '1.62',
      cache_read: '0.81',
    });
    const files = new Set(rows.map((x) => x.price_id.split('#')[0]));
    // The gateway preset for the host first, then the reference list; other gateways' presets not at all.
    expect([...files]).toEqual(['cailag.yaml', 'reference.yaml']);
  });

  it('puts user files first and can leave out the presets', async () => {
    const r = await run('prices', 'list', '--no-presets', '--prices', fixture('valid-prices.json'));
    expect(r.code).toBe(0);
    const lines = r.out.trim().split('\n');
    expect(lines[0]).toMatch(/^PRICE_ID\s+SCOPE\s+CUR\s+UNIT\s+INPUT\s+OUTPUT/);
    expect(lines[1]).toMatch(
      /^valid-prices\.json#gpt-3\.5-turbo@always\s+user\s+USD\s+1K\s+0\.0005\s+0\.0015/,
    );
    expect(lines[2]).toMatch(/^valid-prices\.json#my-\*\[lab\]@always/);
    expect(lines.at(-1)).toBe('2 entries');
  });

  it('fails with file:line:field when a given price file is invalid', async () => {
    const r = await run('prices', 'list', '--prices', fixture('bad-unit.yaml'));
    expect(r.code).toBe(1);
    expect(r.err).toContain('bad-unit.yaml:2:7: unit: unknown unit "1G"');
  });
});

describe('tokenmeter prices import', () => {
  it('writes YAML that passes check (LiteLLM)', async () => {
    const out = join(tempDir(), 'litellm.yaml');
    const r = await run(
      'prices',
      'import',
      '--from',
      'litellm',
      fixture('litellm-excerpt.json'),
      '--out',
      out,
    );
    expect(r.code).toBe(0);
    expect(r.err).toBe(`imported 6 model(s), skipped 3; wrote ${out}\n`);
    const check = await run('prices', 'check', out);
    expect(check.code).toBe(0);
    expect(parsePriceTable(readFileSync(out, 'utf8'), out).table!.entries[0]!.date).toBe('2026-11-23');
  });

  it('prints one-api YAML to stdout with the group ratio folded in', async () => {
    const r = await run(
      'prices',
      'import',
      '--from',
      'oneapi',
      fixture('oneapi-ratios.json'),
      '--group-ratio',
      '0.6',
    );
    expect(r.code).toBe(0);
    expect(r.out).toContain('group ratio 0.6 (from --group-ratio) is folded into every price');
    const t = parsePriceTable(r.out, 'stdout.yaml').table!;
    expect(t.entries.find((e) => e.model === 'gpt-4o')!.written).toEqual({ input: '1.5', output: '6' });
  });

  it('rejects an unknown --from and a bad --group-ratio with a one-line reason', async () => {
    const from = await run('prices', 'import', '--from', 'portkey', fixture('oneapi-ratios.json'));
    expect(from.code).not.toBe(0);
    expect(from.err).toContain("argument 'portkey' is invalid");
    const ratio = await run(
      'prices',
      'import',
      '--from',
      'oneapi',
      fixture('oneapi-ratios.json'),
      '--group-ratio',
      '-1',
    );
    expect(ratio.code).toBe(2);
    expect(ratio.err).toContain('--group-ratio');
  });

  it('has --help for each command', async () => {
    for (const cmd of ['list', 'check', 'import']) {
      const r = await run('prices', cmd, '--help');
      expect(r.out).toContain(`Usage: tokenmeter prices ${cmd}`);
    }
  });
});

describe('the prices command as a real process', () => {
  const driver = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
  const exec = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', driver, ...args], { encoding: 'utf8', timeout: 60_000 });

  it('exits 1 on a bad file and 0 on the presets', () => {
    const bad = exec('prices', 'check', fixture('bad-prices.yaml'));
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('bad-prices.yaml:6:5: prices[0].ouput: unknown key');
    const ok = exec('prices', 'check', ...presetFiles());
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/^ok: /);
  });
});

describe('prices list with a config file', () => {
  it('shows the table serve would use: the config’s prices: files and presets: false', async () => {
    const dir = tempDir();
    writeFileSync(
      join(dir, 'mine.yaml'),
      'currency: CNY\nunit: 1M\nprices:\n  - model: house-model\n    input: 1\n    output: 2\n',
    );
    const cfg = join(dir, 'tokenmeter.yaml');
    writeFileSync(cfg, 'prices: [mine.yaml]\npresets: false\n');
    const r = await run('prices', 'list', '--config', cfg, '--format', 'json');
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.out) as PriceRow[];
    expect(rows.map((x) => x.price_id)).toEqual(['mine.yaml#house-model@always']);
    // Without the config, the presets are listed and the house model is not.
    const all = JSON.parse((await run('prices', 'list', '--format', 'json')).out) as PriceRow[];
    expect(all.length).toBeGreaterThan(50);
    expect(all.some((x) => x.price_id.startsWith('mine.yaml'))).toBe(false);
  });
});
