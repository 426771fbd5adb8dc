/**
 * Model globs, used everywhere a model name is matched against a pattern: price entries
 * (pricing/table.ts), `multipliers.model` keys (pricing/book.ts), `routes[].model`
 * (proxy/router.ts) and budget scopes (budgets/). All follow SQLite GLOB semantics, because a
 * budget's period-to-date spend is summed in the audit log with `request_model GLOB ?` and the
 * live match must agree with it (docs/budgets.md); one syntax everywhere means a pattern means the
 * same thing in every place a user writes one.
 *
 * SQLite GLOB (sqlite3 func.c `patternCompare`, no escape character):
 *   `*` any run of characters (including none), `?` exactly one character,
 *   `[...]` one character from the set, `[^...]` one character not in it. Inside a set, a `]` right
 *   after `[` or `[^` is a member, `a-z` is a range (a reversed range matches nothing; a `-` first,
 *   last or right after a range is a member), nothing is escaped. A `[` with no closing `]` matches
 *   nothing. Case-sensitive; characters are code points.
 */

/** True when `s` has a GLOB metacharacter (`*`, `?` or `[`), i.e. is a pattern, not an exact name. */
export function isGlob(s: string): boolean {
  return /[*?[]/.test(s);
}

/** The pattern as an anchored RegExp that matches exactly the strings SQLite's `s GLOB pattern` does. */
export function globToRegExp(glob: string): RegExp {
  // Code points, as SQLite reads UTF-8 characters (and the `u` flag makes `.` one code point).
  const chars = Array.from(glob);
  let re = '';
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const set = parseSet(chars, i + 1);
      if (set === undefined) {
        // SQLite: an unterminated set never matches, so neither does the whole pattern.
        return /(?!)/u;
      }
      re += set.source;
      i = set.end;
    } else re += escapeChar(c);
  }
  return new RegExp(`^${re}$`, 'su');
}

/** Parses a set starting just after its `[`; returns its RegExp class and the index of its `]`. */
function parseSet(chars: string[], start: number): { source: string; end: number } | undefined {
  let j = start;
  let invert = false;
  if (chars[j] === '^') {
    invert = true;
    j++;
  }
  const members: string[] = [];
  if (chars[j] === ']') {
    members.push(classChar(']'));
    j++;
  }
  // The previous single member, which a following `-x` turns into a range (SQLite's prior_c).
  let prior: string | undefined;
  for (; j < chars.length && chars[j] !== ']'; j++) {
    const c = chars[j]!;
    const next = chars[j + 1];
    if (c === '-' && prior !== undefined && next !== undefined && next !== ']') {
      // prior was already added as a single member; the range adds the rest, if not reversed.
      if (prior.codePointAt(0)! <= next.codePointAt(0)!)
        members.push(`${classChar(prior)}-${classChar(next)}`);
      prior = undefined;
      j++;
    } else {
      members.push(classChar(c));
      prior = c;
    }
  }
  if (j >= chars.length) return undefined;
  return { source: `[${invert ? '^' : ''}${members.join('')}]`, end: j };
}

/** A character inside a RegExp class, as a code point escape (nothing in it is then special). */
function classChar(c: string): string {
  return `\\u{${c.codePointAt(0)!.toString(16)}}`;
}

function escapeChar(c: string): string {
  return /[\\^$.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c;
}
