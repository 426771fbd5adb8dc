import { describe, expect, it } from 'vitest';
import { createRedactor, redactAndTruncate, WINDOW_MARGIN } from '../../src/sinks/audit/redact.js';
import { TokenmeterError } from '../../src/errors.js';

const redactor = createRedactor(['acct-[0-9]+']);

describe('body redaction', () => {
  it('redacts keys, bearer tokens, emails and configured patterns', () => {
    const text = redactor.redact(
      'Authorization: Bearer eyJhbGciOi.J9x-y_z key=sk-ant-api03-AbCdEf012345 mail ana.b+x@mail.example.co.uk acct-998877',
    );
    expect(text).toBe('Authorization: Bearer [REDACTED] key=[REDACTED_KEY] mail [REDACTED_EMAIL] [REDACTED]');
  });

  it('leaves short bodies whole and cuts long ones at a UTF-8 boundary', () => {
    expect(redactAndTruncate(Buffer.from('héllo'), 100, redactor)).toEqual({
      text: 'héllo',
      truncated: false,
    });
    // "é" is 2 bytes at offsets 1-2: a cap of 2 must not split it.
    expect(redactAndTruncate(Buffer.from('héllo'), 2, redactor)).toEqual({ text: 'h', truncated: true });
  });

  it('never stores part of a secret that straddles the cap', () => {
    const body = Buffer.from('x'.repeat(10) + ' sk-abcdefghijklmnop');
    const out = redactAndTruncate(body, 20, redactor);
    expect(out.truncated).toBe(true);
    expect(out.text).not.toContain('sk-abc');
    expect(out.text.startsWith('x'.repeat(10) + ' ')).toBe(true);
  });

  it('drops a token cut by the read window even when redaction pulls it under the cap', () => {
    // A secret pattern that only matches whole: its first 2 digits alone are not recognised.
    const strict = createRedactor(['acct-[0-9]{9}']);
    // 100 e-mails shrink by ~2 KiB on redaction, more than the window margin past the cap.
    const emails = Array.from({ length: 100 }, (_, i) => `someone.long.name${i}@example-company.com`).join(
      ' ',
    );
    const cap = Buffer.byteLength(emails) - 100;
    const secretTail = ' acct-123456789';
    // Place the secret so the window (cap + margin bytes) ends 8 bytes into it: " acct-12".
    const filler = 'y'.repeat(cap + WINDOW_MARGIN - Buffer.byteLength(emails) - 1 - 8);
    const body = Buffer.from(`${emails} ${filler}${secretTail}`);
    const out = redactAndTruncate(body, cap, strict);
    expect(out.truncated).toBe(true);
    expect(out.text).not.toContain('acct-1');
    expect(out.text).not.toContain('@example-company.com');
    expect(out.text.endsWith(`${filler} `)).toBe(true);
  });

  it('rejects an invalid configured pattern at startup', () => {
    expect(() => createRedactor(['(unclosed'])).toThrow(TokenmeterError);
  });
});
