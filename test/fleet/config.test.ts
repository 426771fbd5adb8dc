/** `fleet:` config and TOKENMETER_PG_URL (docs/config.md): defaults, precedence, and no password in errors. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSettings } from '../../src/config/load.js';
import { redactSecret, redactUrl } from '../../src/fleet/redact.js';
import { tempDir } from '../audit/records.js';

const URL_A = 'postgres://tm:s3cr%40t-pw@db.internal:5432/fleet';

function load(yaml: string, env: NodeJS.ProcessEnv = {}) {
  const t = tempDir();
  try {
    const file = join(t.dir, 'tokenmeter.yaml');
    writeFileSync(file, yaml);
    return loadSettings({ config: file }, env, t.dir);
  } finally {
    t.cleanup();
  }
}

const errorOf = (f: () => unknown): string => {
  try {
    f();
  } catch (err) {
    return String(err instanceof Error ? err.message : err);
  }
  throw new Error('expected an error');
};

describe('fleet config', () => {
  it('is off without fleet.postgres or TOKENMETER_PG_URL', () => {
    expect(load('port: 4000\n').fleet).toBeUndefined();
  });

  it('fills in the defaults', () => {
    const s = load(`fleet:\n  host: web-1\n  postgres:\n    url: "${URL_A}"\n`);
    expect(s.fleet).toEqual({
      host: 'web-1',
      reservationTtlMs: 600_000,
      budgetTimeoutMs: 2_000,
      postgres: { url: URL_A, poolSize: 4, shipIntervalMs: 1000, batchSize: 500 },
    });
  });

  it('reads the options and ${VAR} references; TOKENMETER_PG_URL wins over the file', () => {
    const yaml =
      'fleet:\n  postgres:\n    url: "${PG}"\n    pool_size: 2\n    ship_interval: 250ms\n    batch_size: 100\n';
    const s = load(yaml, { PG: URL_A });
    expect(s.fleet?.postgres).toEqual({ url: URL_A, poolSize: 2, shipIntervalMs: 250, batchSize: 100 });
    expect(s.fleet?.host).toBeTruthy();
    const env = load(yaml, { PG: URL_A, TOKENMETER_PG_URL: 'postgresql://other@h/db' });
    expect(env.fleet?.postgres.url).toBe('postgresql://other@h/db');
    expect(load('', { TOKENMETER_PG_URL: URL_A }).fleet?.postgres.url).toBe(URL_A);
  });

  it('names file:line:field for a bad URL without echoing it', () => {
    const msg = errorOf(() => load('fleet:\n  postgres:\n    url: "mysql://u:hunter2@h/db"\n'));
    expect(msg).toMatch(/tokenmeter\.yaml:3:\d+: fleet\.postgres\.url: expected a postgres/);
    expect(msg).not.toContain('hunter2');
    const envMsg = errorOf(() => load('', { TOKENMETER_PG_URL: 'http://u:hunter2@h/db' }));
    expect(envMsg).toContain('TOKENMETER_PG_URL');
    expect(envMsg).not.toContain('hunter2');
  });

  it('refuses a batch_size past what one INSERT can carry', () => {
    expect(errorOf(() => load(`fleet:\n  postgres:\n    url: "${URL_A}"\n    batch_size: 5000\n`))).toContain(
      'fleet.postgres.batch_size',
    );
  });
});

describe('password redaction', () => {
  it('masks the password of a URL, also in the query string', () => {
    expect(redactUrl(URL_A)).toBe('postgres://tm:***@db.internal:5432/fleet');
    expect(redactUrl('postgres://h/db?password=pw1')).toBe('postgres://h/db?password=***');
    expect(redactUrl('not a url')).toBe('postgres://***');
  });

  it('removes the password, raw or decoded, from any text', () => {
    const text = `connect ${URL_A} failed for s3cr@t-pw and s3cr%40t-pw`;
    const out = redactSecret(text, URL_A);
    expect(out).not.toContain('s3cr');
    expect(out).toContain('postgres://tm:***@db.internal:5432/fleet');
  });
});
