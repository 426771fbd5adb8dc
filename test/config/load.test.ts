import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadSettings } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'tm-config-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

/** Loads `yaml` as a config file and expects each `line:col: field: message` among its errors. */
function expectConfigErrors(yaml: string, expected: string[]): void {
  const f = write('errors.yaml', yaml);
  const message = configErrorOf(() => loadSettings({ config: f }, {}, dir)).message;
  for (const e of expected) expect(message).toContain(`${f}:${e}`);
}

describe('loadSettings precedence (§2): flag > env > file > default', () => {
  it('uses defaults when nothing is given', () => {
    const s = loadSettings({}, {}, dir);
    expect(s.host).toBe('127.0.0.1');
    expect(s.port).toBe(4000);
    expect(s.logLevel).toBe('info');
    expect(s.db).toBe(join(dir, 'tokenmeter.db'));
    expect(s.presets).toBe(true);
    expect(s.upstreams).toEqual([]);
    expect(s.configFile).toBeUndefined();
  });

  it('picks ./tokenmeter.yaml when present, and flag > env > file for each setting', () => {
    write(
      'tokenmeter.yaml',
      'host: 0.0.0.0\nport: 5000\nlog_level: warn\ndb: audit.db\nprices: [p.yaml]\nupstreams:\n  - {name: default, url: "https://file.example/v1", headers: {x-group: a}}\n',
    );
    const fileOnly = loadSettings({}, {}, dir);
    expect(fileOnly.configFile).toBe(join(dir, 'tokenmeter.yaml'));
    expect(fileOnly.host).toBe('0.0.0.0');
    expect(fileOnly.port).toBe(5000);
    expect(fileOnly.logLevel).toBe('warn');
    expect(fileOnly.db).toBe(join(dir, 'audit.db'));
    expect(fileOnly.priceFiles).toEqual([join(dir, 'p.yaml')]);
    expect(fileOnly.upstreams[0]!.url.href).toBe('https://file.example/v1');

    const env = {
      TOKENMETER_HOST: '127.0.0.2',
      TOKENMETER_PORT: '6000',
      TOKENMETER_LOG_LEVEL: 'debug',
      TOKENMETER_DB: ':memory:',
      TOKENMETER_PRICES: 'a.yaml, b.yaml',
      TOKENMETER_UPSTREAM: 'https://env.example/v1',
    };
    const envWins = loadSettings({}, env, dir);
    expect(envWins.host).toBe('127.0.0.2');
    expect(envWins.port).toBe(6000);
    expect(envWins.logLevel).toBe('debug');
    expect(envWins.db).toBe(':memory:');
    expect(envWins.priceFiles).toEqual([join(dir, 'a.yaml'), join(dir, 'b.yaml')]);
    expect(envWins.upstreams[0]!.url.href).toBe('https://env.example/v1');
    // --upstream replaces the URL of the configured `default` but keeps its headers.
    expect(envWins.upstreams[0]!.headers).toEqual({ 'x-group': 'a' });

    const flagsWin = loadSettings(
      {
        host: '127.0.0.3',
        port: '7000',
        logLevel: 'error',
        db: false,
        prices: ['c.yaml'],
        presets: false,
        upstream: 'http://flag.example',
      },
      env,
      dir,
    );
    expect(flagsWin.host).toBe('127.0.0.3');
    expect(flagsWin.port).toBe(7000);
    expect(flagsWin.logLevel).toBe('error');
    expect(flagsWin.db).toBeNull();
    expect(flagsWin.priceFiles).toEqual([join(dir, 'c.yaml')]);
    expect(flagsWin.presets).toBe(false);
    expect(flagsWin.upstreams.map((u) => [u.name, u.url.href])).toEqual([
      ['default', 'http://flag.example/'],
    ]);
  });

  it('--config and TOKENMETER_CONFIG choose the file (flag first); a missing explicit file is an error', () => {
    const a = write('a.yaml', 'port: 1111\n');
    const b = write('b.yaml', 'port: 2222\n');
    expect(loadSettings({}, { TOKENMETER_CONFIG: b }, dir).port).toBe(2222);
    expect(loadSettings({ config: a }, { TOKENMETER_CONFIG: b }, dir).port).toBe(1111);
    const err = configErrorOf(() => loadSettings({ config: 'nope.yaml' }, {}, dir));
    expect(err.code).toBe('CONFIG_NOT_FOUND');
    expect(err.message).toContain('nope.yaml');
  });

  it('--upstream adds `default` in front of configured upstreams', () => {
    const f = write(
      'c.yaml',
      'upstreams:\n  - {name: other, url: "https://o.example", connect_timeout: 2s, inject_usage: false}\n',
    );
    const s = loadSettings({ config: f, upstream: 'https://d.example/v1' }, {}, dir);
    expect(s.upstreams.map((u) => u.name)).toEqual(['default', 'other']);
    expect(s.upstreams[1]!.connectTimeoutMs).toBe(2000);
    expect(s.upstreams[1]!.injectUsage).toBe(false);
    expect(s.upstreams[0]!.injectUsage).toBe(true);
  });

  it('interpolates ${ENV_VAR} in string values', () => {
    const f = write(
      'c.yaml',
      'upstreams:\n  - name: g\n    url: https://g.example\n    headers:\n      authorization: "Bearer ${GW_KEY}"\n',
    );
    const s = loadSettings({ config: f }, { GW_KEY: 'sk-secret' }, dir);
    expect(s.upstreams[0]!.headers.authorization).toBe('Bearer sk-secret');
    const err = configErrorOf(() => loadSettings({ config: f }, {}, dir));
    expect(err.message).toBe(`${f}:5:22: environment variable GW_KEY is not set`);
  });

  it('rejects bad flag values with a usage error (exit 2)', () => {
    const err = configErrorOf(() => loadSettings({ port: 'abc' }, {}, dir));
    expect(err.exitCode).toBe(2);
    expect(err.message).toContain('--port');
    expect(configErrorOf(() => loadSettings({ upstream: 'ftp://x' }, {}, dir)).message).toContain(
      '--upstream',
    );
    expect(configErrorOf(() => loadSettings({ logLevel: 'loud' }, {}, dir)).message).toContain('log level');
  });
});

describe('config errors name file, line, column and field', () => {
  it('reports every problem at once', () => {
    const f = write(
      'bad.yaml',
      [
        'port: 99999', // line 1
        'upstreams:', // 2
        '  - name: gw', // 3
        '    url: not-a-url', // 4
        '    mutliplier: 0.8', // 5
        'routes:', // 6
        '  - {model: "claude-*", upstream: nowhere}', // 7
        'limits:', // 8
        '  idle_timeout: soon', // 9
      ].join('\n'),
    );
    const err = configErrorOf(() => loadSettings({ config: f }, {}, dir));
    const lines = err.message.split('\n');
    expect(lines).toContain(`${f}:1:7: port: Number must be less than or equal to 65535`);
    expect(lines).toContain(`${f}:4:10: upstreams[0].url: Invalid url`);
    expect(lines).toContain(
      `${f}:5:5: upstreams[0].mutliplier: unknown key (a typo? it would otherwise be ignored)`,
    );
    expect(lines.some((l) => l.startsWith(`${f}:9:17: limits.idle_timeout: expected a duration`))).toBe(true);
    expect(err.problems.length).toBe(4);
  });

  it('reports unknown route upstreams and YAML syntax errors with a position', () => {
    const f = write(
      'r.yaml',
      'upstreams:\n  - {name: gw, url: "https://g.example"}\nroutes:\n  - {model: "claude-*", upstream: nowhere}\n',
    );
    expect(configErrorOf(() => loadSettings({ config: f }, {}, dir)).message).toBe(
      `${f}:4:35: routes[0].upstream: unknown upstream "nowhere"`,
    );
    const g = write('s.yaml', 'port: 1\n  bad: [\n');
    expect(configErrorOf(() => loadSettings({ config: g }, {}, dir)).message).toMatch(
      new RegExp(`^${g.replace(/[.]/g, '\\.')}:\\d+:\\d+: `),
    );
  });
});

describe('limits.max_buffered_bodies (docs/proxy.md, "Client-side limits")', () => {
  it('defaults to 512 MiB, takes a size, and is never below max_request_body', () => {
    expect(loadSettings({}, {}, dir).limits.maxBufferedBodies).toBe(512 * 1024 ** 2);
    const set = write('set.yaml', 'limits:\n  max_buffered_bodies: 64MiB\n');
    expect(loadSettings({ config: set }, {}, dir).limits.maxBufferedBodies).toBe(64 * 1024 ** 2);
    const low = write('low.yaml', 'limits:\n  max_request_body: 8MiB\n  max_buffered_bodies: 1MiB\n');
    expect(loadSettings({ config: low }, {}, dir).limits.maxBufferedBodies).toBe(8 * 1024 ** 2);
    const bad = write('bad.yaml', 'limits:\n  max_buffered_bodies: lots\n');
    expect(configErrorOf(() => loadSettings({ config: bad }, {}, dir)).message).toContain(
      `${bad}:2:24: limits.max_buffered_bodies: expected a size like 512KiB, 8MiB or 1GiB`,
    );
  });
});

describe('client timeouts Node would refuse or switch off (docs/proxy.md, "Client-side limits")', () => {
  it('a request timeout below the default header timeout lowers the header timeout with it', () => {
    const f = write('short.yaml', 'limits:\n  client_request_timeout: 10s\n');
    const s = loadSettings({ config: f }, {}, dir);
    expect(s.limits.clientRequestTimeoutMs).toBe(10_000);
    expect(s.limits.clientHeaderTimeoutMs).toBe(10_000);
  });

  it('a header timeout longer than the request timeout, or 0 for any timeout, is a config error at its line', () => {
    const f = write('bad.yaml', 'limits:\n  client_header_timeout: 60s\n  client_request_timeout: 10s\n');
    expect(configErrorOf(() => loadSettings({ config: f }, {}, dir)).message).toContain(
      `${f}:2:26: limits.client_header_timeout: must not be longer than client_request_timeout (10000 ms)`,
    );
    // 0 is not "no timeout": an idle_timeout of 0 answered every request 504 at once.
    expectConfigErrors(
      'limits:\n  client_header_timeout: 0\n  client_request_timeout: 0s\n  idle_timeout: 0\n',
      [
        '2:26: limits.client_header_timeout: must be more than 0',
        '3:27: limits.client_request_timeout: must be more than 0',
        '4:17: limits.idle_timeout: must be more than 0',
      ],
    );
  });
});

describe('sizes with no "off" value', () => {
  it('0 for max_request_body, max_event_bytes or max_buffered_bodies is a config error at its line', () => {
    expectConfigErrors('limits:\n  max_request_body: 0\n  max_event_bytes: 0B\n  max_buffered_bodies: 0\n', [
      '2:21: limits.max_request_body: must be more than 0',
      '3:20: limits.max_event_bytes: must be more than 0',
      '4:24: limits.max_buffered_bodies: must be more than 0',
    ]);
  });
});
