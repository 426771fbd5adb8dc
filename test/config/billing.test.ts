/**
 * `billing:` per upstream (issue 13, docs/reconcile.md): one source or a list, defaults filled in,
 * ${ENV} keys, and file:line:field errors like the rest of the config.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadSettings } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tm-config-billing-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(text: string): string {
  const p = join(dir, 'tokenmeter.yaml');
  writeFileSync(p, text);
  return p;
}

function problemLines(file: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    loadSettings({ config: file }, env, dir);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message.split('\n');
  }
  throw new Error('expected a ConfigError');
}

describe('billing: config', () => {
  it('one source, with defaults and an ${ENV} key', () => {
    const f = write(
      [
        'upstreams:',
        '  - name: dieyu',
        '    url: https://open.dieyuyun.com/v1',
        '    billing: { source: balance, api_key: "${DIEYU_KEY}" }',
      ].join('\n'),
    );
    const s = loadSettings({ config: f }, { DIEYU_KEY: 'sk-dieyu' }, dir);
    expect(s.upstreams[0]!.billing).toEqual([
      {
        source: 'balance',
        path: undefined,
        intervalMs: 300_000,
        apiKey: 'sk-dieyu',
        currency: undefined,
        quotaPerUnit: 500_000,
        windowMs: 86_400_000,
      },
    ]);
  });

  it('a list of sources; oneapi/newapi default to USD', () => {
    const f = write(
      [
        'upstreams:',
        '  - name: relay',
        '    url: https://relay.example/v1',
        '    billing:',
        '      - { source: oneapi, api_key: sk-a, interval: 1m, window: 1h }',
        '      - { source: newapi, api_key: sk-a, quota_per_unit: 1000000, currency: CNY, path: /api/usage/token }',
      ].join('\n'),
    );
    const b = loadSettings({ config: f }, {}, dir).upstreams[0]!.billing!;
    expect(b.map((x) => [x.source, x.currency, x.intervalMs, x.windowMs, x.quotaPerUnit, x.path])).toEqual([
      ['oneapi', 'USD', 60_000, 3_600_000, 500_000, undefined],
      ['newapi', 'CNY', 300_000, 86_400_000, 1_000_000, '/api/usage/token'],
    ]);
  });

  it('errors name file:line:col and the field', () => {
    const f = write(
      [
        'upstreams:', // 1
        '  - name: dieyu', // 2
        '    url: https://open.dieyuyun.com/v1', // 3
        '    billing:', // 4
        '      source: ledger', // 5
        '      interval: often', // 6
        '      currency: yuan', // 7
        '      api_kye: sk-x', // 8
      ].join('\n'),
    );
    const lines = problemLines(f);
    expect(
      lines.some((l) => l.startsWith(`${f}:5:15: upstreams[0].billing.source: Invalid enum value`)),
    ).toBe(true);
    expect(
      lines.some((l) => l.startsWith(`${f}:6:17: upstreams[0].billing.interval: expected a duration`)),
    ).toBe(true);
    expect(lines).toContain(
      `${f}:7:17: upstreams[0].billing.currency: expected an ISO 4217 code such as CNY or USD`,
    );
    expect(lines).toContain(
      `${f}:8:7: upstreams[0].billing.api_kye: unknown key (a typo? it would otherwise be ignored)`,
    );
    expect(lines.some((l) => l.includes('upstreams[0].billing.api_key: Required'))).toBe(true);
  });

  it('an unset ${ENV} key is an error at its line', () => {
    const f = write(
      'upstreams:\n  - name: d\n    url: https://d.example/v1\n    billing: { source: balance_delta, api_key: "${NOPE}" }\n',
    );
    expect(problemLines(f).some((l) => l.startsWith(`${f}:4:`) && l.includes('NOPE is not set'))).toBe(true);
  });
});
