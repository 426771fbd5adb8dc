/*
 * DOM helpers. Every string that may come from traffic (models, apps, paths, error messages,
 * captured bodies) goes into the page through textContent or setAttribute only, never innerHTML,
 * so a model named <img src=x onerror=alert(1)> is shown as those characters and does nothing.
 */
/* global document */

/**
 * h('td', { class: 'num' }, 'text', childNode, …): an element. Attribute values are set with
 * setAttribute (never parsed as markup); string children become text nodes.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (typeof c === 'string' || typeof c === 'number')
      el.appendChild(document.createTextNode(String(c)));
    else el.appendChild(c);
  }
}

/** SVG element with numeric/text attributes (no markup parsing either). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const c of children) {
    if (typeof c === 'string') el.appendChild(document.createTextNode(c));
    else if (c) el.appendChild(c);
  }
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Unknown is shown as "-", never as 0 (as `tokenmeter report` does). */
export const UNKNOWN = '-';

export function show(v) {
  return v === null || v === undefined || v === '' ? UNKNOWN : String(v);
}

/** ISO time in UTC without milliseconds noise: 2026-11-30 08:15:02.123Z. */
export function time(ms) {
  if (ms === null || ms === undefined) return UNKNOWN;
  return new Date(ms).toISOString().replace('T', ' ');
}

/** A record's cost as `tokenmeter report` prints it, with its currency. */
export function cost(row) {
  return row.cost_text === null ? UNKNOWN : `${row.cost_text} ${row.currency ?? ''}`.trim();
}
