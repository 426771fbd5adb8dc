import { describe, expect, it } from 'vitest';
import { joinUpstreamPath } from '../../src/proxy/path-join.js';
import { createRouter, globToRegExp } from '../../src/proxy/router.js';
import { upstreamSettings } from './helpers.js';

describe('joinUpstreamPath (§3.1)', () => {
  const j = (u: string, p: string) => joinUpstreamPath(new URL(u), p);
  it('removes the longest segment-wise overlap', () => {
    expect(j('https://h/v1', '/v1/chat/completions')).toBe('/v1/chat/completions');
    expect(j('https://h/api/v1', '/v1/models')).toBe('/api/v1/models');
    expect(j('https://h', '/v1/messages')).toBe('/v1/messages');
    expect(j('https://h/', '/v1/messages')).toBe('/v1/messages');
    expect(j('https://h/v1/', '/v1/embeddings')).toBe('/v1/embeddings');
    expect(j('https://h/openai/v1', '/openai/v1/models')).toBe('/openai/v1/models');
  });
  it('does not merge non-overlapping segments', () => {
    expect(j('https://h/api', '/v1/models')).toBe('/api/v1/models');
    expect(j('https://h/v1', '/chat/completions')).toBe('/v1/chat/completions');
    expect(j('https://h/v1x', '/v1/models')).toBe('/v1x/v1/models');
  });
  it('passes the query string through unchanged', () => {
    expect(j('https://h/v1', '/v1/models?limit=2&x=%2F')).toBe('/v1/models?limit=2&x=%2F');
    expect(j('https://h', '/?a=1')).toBe('/?a=1');
  });
  it('keeps a trailing slash the app sent', () => {
    expect(j('https://h/v1', '/v1/files/')).toBe('/v1/files/');
  });
});

describe('createRouter (§3.1)', () => {
  const def = upstreamSettings('default', 'https://a.example/v1');
  const dieyu = upstreamSettings('dieyu', 'https://b.example/v1', { app: 'from-upstream' });
  const pre = upstreamSettings('pre', 'https://c.example', { prefix: '/pre' });

  it('routes by model glob, by path prefix (stripped), else to default', () => {
    const r = createRouter({
      upstreams: [dieyu, def, pre],
      routes: [
        { model: 'claude-*', upstream: 'dieyu', app: 'claude-app' },
        { prefix: '/dieyu', upstream: 'dieyu' },
      ],
    });
    expect(r.usesModel).toBe(true);
    const byModel = r.pick('/v1/messages', 'claude-3-5-sonnet');
    expect(byModel.upstream.name).toBe('dieyu');
    expect(byModel.path).toBe('/v1/messages');
    expect(byModel.routeApp).toBe('claude-app');

    const byPrefix = r.pick('/dieyu/v1/chat/completions?x=1', 'gpt-4o');
    expect(byPrefix.upstream.name).toBe('dieyu');
    expect(byPrefix.path).toBe('/v1/chat/completions?x=1');
    expect(byPrefix.routeApp).toBe('from-upstream');

    expect(r.pick('/dieyux/v1/models', undefined).upstream.name).toBe('default');
    const byUpstreamPrefix = r.pick('/pre/v1/models', undefined);
    expect(byUpstreamPrefix.upstream.name).toBe('pre');
    expect(byUpstreamPrefix.path).toBe('/v1/models');
    expect(r.pick('/v1/chat/completions', 'gpt-4o').upstream.name).toBe('default');
    expect(r.pick('/v1/chat/completions', undefined).upstream.name).toBe('default');
  });

  it('falls back to the first upstream when none is named default', () => {
    const r = createRouter({ upstreams: [dieyu, pre], routes: [] });
    expect(r.usesModel).toBe(false);
    expect(r.pick('/v1/models', undefined).upstream.name).toBe('dieyu');
  });

  it('rejects a route to an unknown upstream', () => {
    expect(() => createRouter({ upstreams: [def], routes: [{ model: 'x', upstream: 'nope' }] })).toThrow(
      /nope/,
    );
  });

  it('route model globs use SQLite GLOB sets', () => {
    const r = createRouter({
      upstreams: [def, dieyu],
      routes: [{ model: 'claude-[^3]*', upstream: 'dieyu' }],
    });
    expect(r.pick('/v1/messages', 'claude-4-sonnet').upstream.name).toBe('dieyu');
    expect(r.pick('/v1/messages', 'claude-3-opus').upstream.name).toBe('default');
    expect(globToRegExp('gpt-[45]o').test('gpt-4o')).toBe(true);
  });

  it('glob matches whole names only', () => {
    expect(globToRegExp('claude-*').test('claude-3')).toBe(true);
    expect(globToRegExp('claude-*').test('xclaude-3')).toBe(false);
    expect(globToRegExp('gpt-4.1').test('gpt-481')).toBe(false);
    expect(globToRegExp('gpt-4?').test('gpt-4o')).toBe(true);
  });
});
