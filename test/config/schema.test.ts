import { describe, expect, it } from 'vitest';
import { ConfigFile, numberToDecimalString, parseDurationMs } from '../../src/config/schema.js';

describe('config schema', () => {
  it('keeps decimals exact as strings', () => {
    expect(numberToDecimalString(0.8)).toBe('0.8');
    expect(numberToDecimalString(1e-7)).toBe('0.0000001');
    expect(numberToDecimalString(1.5e-7)).toBe('0.00000015');
    expect(numberToDecimalString(2e21)).toBe('2000000000000000000000');
  });

  it('parses durations', () => {
    expect(parseDurationMs('250ms')).toBe(250);
    expect(parseDurationMs('30s')).toBe(30_000);
    expect(parseDurationMs('5m')).toBe(300_000);
  });

  it('rejects unknown keys (typos would otherwise do nothing)', () => {
    const r = ConfigFile.safeParse({
      upstreams: [{ name: 'a', url: 'http://127.0.0.1:1', mutliplier: 0.8 }],
    });
    expect(r.success).toBe(false);
    expect(JSON.stringify(r.error?.issues)).toContain('mutliplier');
  });

  it('accepts a multiplier as a number and keeps it as a decimal string', () => {
    const r = ConfigFile.parse({ upstreams: [{ name: 'a', url: 'http://127.0.0.1:1', multiplier: 0.8 }] });
    expect(r.upstreams?.[0]?.multiplier).toBe('0.8');
  });
});
