import { describe, expect, it } from 'vitest';
import { extractApiKey, keyFingerprint, resolveApp } from '../src/attribution.js';

describe('key fingerprints', () => {
  it('is 12 hex chars of HMAC-SHA256 and depends on the secret', () => {
    const a = keyFingerprint('secret-one-0123456789', 'sk-test-abc');
    expect(a).toMatch(/^[0-9a-f]{12}$/);
    expect(keyFingerprint('secret-one-0123456789', 'sk-test-abc')).toBe(a);
    expect(keyFingerprint('secret-two-0123456789', 'sk-test-abc')).not.toBe(a);
    expect(a).not.toContain('abc');
  });

  it('finds the key in Authorization, x-api-key or api-key', () => {
    expect(extractApiKey({ authorization: 'Bearer sk-1' })).toBe('sk-1');
    expect(extractApiKey({ 'x-api-key': 'sk-2' })).toBe('sk-2');
    expect(extractApiKey({ 'api-key': 'sk-3' })).toBe('sk-3');
    expect(extractApiKey({})).toBeUndefined();
  });
});

describe('app attribution precedence', () => {
  const apps = { aaaaaaaaaaaa: 'billing-bot' };
  it('header beats key map beats route beats default', () => {
    expect(
      resolveApp({ headers: { 'x-tokenmeter-app': 'web' }, keyId: 'aaaaaaaaaaaa', apps, routeApp: 'r' }),
    ).toBe('web');
    expect(resolveApp({ headers: {}, keyId: 'aaaaaaaaaaaa', apps, routeApp: 'r' })).toBe('billing-bot');
    expect(resolveApp({ headers: {}, keyId: 'bbbbbbbbbbbb', apps, routeApp: 'r' })).toBe('r');
    expect(resolveApp({ headers: {}, keyId: undefined, apps, routeApp: undefined })).toBe('default');
  });
});
