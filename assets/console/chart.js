/*
 * Spend over time as an inline SVG line chart drawn here (no chart library, no CDN). One chart per
 * currency: amounts of different currencies never share an axis or a sum. Amounts arrive as exact
 * decimal strings; they become floats only for the pixel position of a point, while every label
 * and tooltip shows the exact string.
 */
import { h, svg } from './dom.js';

const W = 760;
const H = 260;
const PAD = { left: 70, right: 16, top: 12, bottom: 34 };
const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#be185d', '#4d7c0f'];

/** Bucket starts (ms) from `fromMs` to `toMs`, aligned like the API's buckets. */
function buckets(fromMs, toMs, bucketMs) {
  const out = [];
  for (let t = Math.floor(fromMs / bucketMs) * bucketMs; t < toMs; t += bucketMs) out.push(t);
  return out;
}

function label(ms, bucketMs) {
  const iso = new Date(ms).toISOString();
  return bucketMs < 86_400_000 ? iso.slice(5, 13).replace('T', ' ') + 'h' : iso.slice(0, 10);
}

/**
 * spend: the /-/api/spend answer; currency: which of its currencies. Returns a <figure> with the
 * SVG (circle.point per non-empty bucket, a polyline per series) and its legend.
 */
export function spendChart(spend, currency) {
  const series = spend.series.filter((s) => s.currency === currency);
  const from = Date.parse(spend.from);
  const to = Date.parse(spend.to);
  const xs = buckets(from, to, spend.bucket_ms);
  const index = new Map(xs.map((t, i) => [t, i]));
  let max = 0;
  for (const s of series) for (const p of s.points) max = Math.max(max, Number(p.cost));
  if (max === 0) max = 1;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (xs.length <= 1 ? plotW / 2 : (i * plotW) / (xs.length - 1));
  const y = (v) => PAD.top + plotH - (v / max) * plotH;

  const root = svg('svg', {
    class: 'chart',
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'data-currency': currency,
    'aria-label': `spend in ${currency} per ${spend.bucket}`,
  });
  // Axes and a few gridlines.
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    root.appendChild(svg('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    root.appendChild(
      svg('text', { class: 'axis', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, v.toPrecision(3)),
    );
  }
  const step = Math.max(1, Math.ceil(xs.length / 8));
  xs.forEach((t, i) => {
    if (i % step !== 0) return;
    root.appendChild(
      svg('text', { class: 'axis', x: x(i), y: H - 12, 'text-anchor': 'middle' }, label(t, spend.bucket_ms)),
    );
  });

  const legend = h('ul', { class: 'legend' });
  series.forEach((s, n) => {
    const color = COLORS[n % COLORS.length];
    const byBucket = new Map(s.points.map((p) => [Date.parse(p.t), p]));
    // A bucket without priced requests spent nothing: the line goes through 0 there.
    const coords = xs.map((t, i) => `${x(i).toFixed(1)},${y(Number(byBucket.get(t)?.cost ?? 0)).toFixed(1)}`);
    root.appendChild(svg('polyline', { class: 'line', points: coords.join(' '), stroke: color }));
    for (const p of s.points) {
      const i = index.get(Date.parse(p.t));
      if (i === undefined) continue;
      const name = s.key ?? 'all';
      root.appendChild(
        svg(
          'circle',
          { class: 'point', cx: x(i).toFixed(1), cy: y(Number(p.cost)).toFixed(1), r: 3.5, fill: color },
          svg('title', {}, `${name} ${p.t}: ${p.cost} ${currency} (${p.requests} requests)`),
        ),
      );
    }
    legend.appendChild(
      h(
        'li',
        {},
        h('span', { class: 'swatch', 'data-color': n % COLORS.length }),
        `${s.key ?? 'all'}: ${s.total} ${currency}`,
      ),
    );
  });
  return h(
    'figure',
    { class: 'chart-box' },
    h('figcaption', {}, `Spend in ${currency} per ${spend.bucket} (UTC)`),
    root,
    legend,
  );
}
