import { openSqlite } from '../src/sinks/audit/sqlite.js';
import { afterAll, describe, expect, it } from 'vitest';
import { globToRegExp, isGlob } from '../src/glob.js';

describe('globToRegExp (SQLite GLOB semantics)', () => {
  it('handles *, ?, sets and negated sets, case-sensitively', () => {
    expect(globToRegExp('gpt-*').test('gpt-4o')).toBe(true);
    expect(globToRegExp('gpt-*').test('GPT-4o')).toBe(false);
    expect(globToRegExp('gpt-4?').test('gpt-4o')).toBe(true);
    expect(globToRegExp('gpt-4?').test('gpt-4')).toBe(false);
    expect(globToRegExp('claude-[0-9]*').test('claude-3-opus')).toBe(true);
    expect(globToRegExp('claude-[^0-9]*').test('claude-3-opus')).toBe(false);
    expect(globToRegExp('claude-*').test('xclaude-3')).toBe(false);
    expect(globToRegExp('a.b+(c)').test('a.b+(c)')).toBe(true);
    expect(globToRegExp('gpt-4.1').test('gpt-481')).toBe(false);
  });

  it('treats a `[` without its `]` as matching nothing, and `[[]` as a literal `[`', () => {
    expect(globToRegExp('sonnet[1m').test('sonnet[1m')).toBe(false);
    expect(globToRegExp('sonnet[[]1m]').test('sonnet[1m]')).toBe(true);
  });

  it('isGlob is true exactly when a metacharacter is present', () => {
    expect(isGlob('gpt-4o')).toBe(false);
    expect(isGlob('gpt-4.1-mini')).toBe(false);
    expect(isGlob('gpt-*')).toBe(true);
    expect(isGlob('gpt-4?')).toBe(true);
    expect(isGlob('claude-[34]')).toBe(true);
  });

  describe('agrees with SQLite GLOB', () => {
    const db = openSqlite(':memory:');
    afterAll(() => db.close());
    const stmt = db.prepare('SELECT ? GLOB ? AS m');
    const patterns = [
      '*',
      '?',
      'a*',
      '*a',
      'a?c',
      '[abc]',
      '[^abc]',
      '[a-c]x',
      '[c-a]',
      '[^c-a]',
      '[]]',
      '[]a]',
      '[^]]',
      '[^]a]',
      '[-a]',
      '[a-]',
      '[a-c-e]',
      '[]-a]',
      '[',
      'a[',
      '[a',
      '[^',
      '[]',
      '[^]',
      'a.b',
      '^a$',
      '(a|b)',
      'a\\b',
      '[\\]',
      '[.]',
      '[*]',
      '[?]',
      '[[]',
      'é?',
      '[é-ë]',
      '😀?',
      '*[0-9]',
      'gpt-4o*',
      'x*y*z',
      '*\n*',
      '[/]',
      '{a}',
      '+',
    ];
    const subjects = [
      '',
      'a',
      'b',
      'c',
      'd',
      'e',
      'x',
      ']',
      '-',
      '^',
      '[',
      'ab',
      'abc',
      'aXc',
      'a\nc',
      'cx',
      'ax',
      'a.b',
      'aXb',
      '^a$',
      '(a|b)',
      'a\\b',
      '\\',
      '.',
      '*',
      '?',
      'é',
      'éa',
      'ê',
      'ëz',
      '😀x',
      '😀',
      '5',
      'abc9',
      'gpt-4o-mini',
      'GPT-4o',
      'xyz',
      'x1y2z3',
      'p\nq',
      '/',
      '{a}',
      '+',
      'A',
    ];
    for (const pattern of patterns)
      it(`pattern ${JSON.stringify(pattern)}`, () => {
        const re = globToRegExp(pattern);
        for (const s of subjects) {
          const expected = (stmt.get(s, pattern) as { m: number }).m === 1;
          expect({ s, match: re.test(s) }).toEqual({ s, match: expected });
        }
      });
  });
});
