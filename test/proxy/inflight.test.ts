/**
 * The one in-flight count (src/proxy/context.ts): counters and a flag on each member, never a Set
 * of members (why: the class comment). Adding twice counts once, deleting what is not counted does
 * nothing, the per-upstream counts follow, and drain waits for the last member.
 */
import { describe, expect, it } from 'vitest';
import { Inflight, type InflightMember } from '../../src/proxy/context.js';

const member = (upstreamName?: string): InflightMember => ({ upstreamName, inflight: false, pending: false });

describe('Inflight', () => {
  it('counts each member once, per upstream, and forgets it on delete', () => {
    const f = new Inflight<InflightMember>();
    const a = member('openai');
    const b = member('openai');
    const c = member('anthropic');
    f.add(a);
    f.add(a);
    f.add(b);
    f.add(c);
    expect(f.size).toBe(3);
    expect(Object.fromEntries(f.perUpstream())).toEqual({ openai: 2, anthropic: 1 });
    f.delete(a);
    f.delete(a);
    f.delete(member('openai')); // never added
    expect(f.size).toBe(2);
    expect(Object.fromEntries(f.perUpstream())).toEqual({ openai: 1, anthropic: 1 });
    expect(a.inflight).toBe(false);
    expect(b.inflight).toBe(true);
  });

  it('idle() resolves when the last member leaves, or after its timeout', async () => {
    const f = new Inflight<InflightMember>();
    await f.idle(10_000); // nothing in flight: at once
    const a = member();
    f.add(a);
    let done = false;
    const idle = f.idle(10_000).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    f.delete(a);
    await idle;
    expect(done).toBe(true);
    f.add(member());
    const t0 = Date.now();
    await f.idle(50);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
  });
});

describe('Inflight: requests still being read', () => {
  it('hold() counts a member for drain before it has an upstream; add() moves it, delete() ends it', async () => {
    const f = new Inflight<InflightMember>();
    const a = member();
    f.hold(a);
    expect(f.size).toBe(0); // not in flight yet: the gauge does not show it
    expect(Object.fromEntries(f.perUpstream())).toEqual({});
    let done = false;
    const idle = f.idle(10_000).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false); // drain waits for it
    a.upstreamName = 'openai';
    f.add(a);
    expect(f.size).toBe(1);
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    f.delete(a);
    await idle;
    expect(done).toBe(true);
    // Held and ended without ever getting an upstream (the client left while uploading).
    const b = member();
    f.hold(b);
    const idle2 = f.idle(10_000);
    f.delete(b);
    await idle2;
    expect(f.size).toBe(0);
  });
});
