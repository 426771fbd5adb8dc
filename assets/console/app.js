/*
 * The console's pages (docs/console.md): requests (live table with filters), one request's detail,
 * spend over time, budgets, prices, reconcile, and the fleet (only with fleet.postgres). Hash routes (#/requests?app=x, #/requests/<id>, #/spend …) so
 * the server serves one static page. Every value from the API is placed with textContent (dom.js).
 */
/* global document, window, location */
import { get } from './api.js';
import { spendChart } from './chart.js';
import { UNKNOWN, cost, h, mount, show, time } from './dom.js';

const view = document.getElementById('view');
const banner = document.getElementById('banner');
let status = { audit: true };
let liveTimer;
/** Bumped at every navigation, so a slow answer for a page already left is dropped. */
let generation = 0;

const SINCE = ['1h', '24h', '7d', '30d', '90d'];
const STATUS = ['2xx', '4xx', '5xx', 'none'];
const REQUEST_FILTERS = [
  'since',
  'app',
  'model',
  'upstream',
  'status',
  'error_type',
  'usage_source',
  'cost_source',
];

function route() {
  const hash = location.hash.replace(/^#/, '') || '/requests';
  const [path, query = ''] = hash.split('?');
  return {
    parts: path.split('/').filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(query),
  };
}

function go(path, params) {
  const qs = params ? new URLSearchParams([...params].filter(([, v]) => v !== '')).toString() : '';
  location.hash = `#${path}${qs ? `?${qs}` : ''}`;
}

function select(name, options, value, labelText) {
  return h(
    'label',
    {},
    labelText,
    h(
      'select',
      { name },
      h('option', { value: '' }, 'all'),
      options.map((o) => h('option', { value: o, selected: o === value }, o)),
    ),
  );
}

function input(name, value, labelText) {
  return h(
    'label',
    {},
    labelText,
    h('input', { name, value: value ?? '', type: 'text', autocomplete: 'off', spellcheck: 'false' }),
  );
}

/** A labelled menu of [value, text] pairs. */
function menu(name, labelText, pairs, value) {
  return h(
    'label',
    {},
    labelText,
    h(
      'select',
      { name },
      pairs.map(([v, t]) => h('option', { value: v, selected: v === value }, t)),
    ),
  );
}

/** The window menu; a link may name another `since` the API takes (a date), which it keeps. */
function sinceMenu(since) {
  return menu(
    'since',
    'since',
    [...new Set([...SINCE, since])].map((o) => [o, o]),
    since,
  );
}

function failure(err) {
  return h('p', { class: 'error' }, `Could not load: ${err.message}`);
}

function auditOffNote(reason) {
  return h(
    'p',
    { class: 'notice', id: 'audit-off' },
    `The audit log is off: ${reason}. Requests and spend are not recorded here; budgets and prices still work.`,
  );
}

// ---- requests -------------------------------------------------------------------------------

function requestRow(r) {
  const tokens = [r.input_tokens, r.cache_read_tokens, r.cache_write_tokens, r.output_tokens];
  return h(
    'tr',
    {
      'data-id': r.id,
      class: r.error_type ? 'err' : undefined,
      onclick: () => go(`/requests/${encodeURIComponent(r.id)}`),
    },
    h('td', {}, h('a', { href: `#/requests/${encodeURIComponent(r.id)}` }, time(r.ts_start))),
    h('td', { class: 'app' }, show(r.app)),
    h('td', { class: 'model' }, show(r.request_model)),
    h('td', {}, show(r.upstream)),
    h('td', {}, show(r.operation)),
    h('td', { class: 'num' }, show(r.http_status)),
    h('td', {}, show(r.error_type)),
    h('td', { class: 'num' }, tokens.map(show).join(' / ')),
    h('td', {}, show(r.usage_source)),
    h('td', { class: 'num cost' }, cost(r)),
    h('td', {}, show(r.cost_source)),
    h('td', { class: 'num' }, `${r.duration_ms} ms`),
  );
}

async function requestsPage(params, gen) {
  const filters = Object.fromEntries(REQUEST_FILTERS.map((k) => [k, params.get(k) ?? '']));
  const form = h(
    'form',
    { class: 'filters', id: 'filters' },
    select('since', SINCE, filters.since, 'since'),
    input('app', filters.app, 'app'),
    input('model', filters.model, 'model'),
    input('upstream', filters.upstream, 'upstream'),
    select('status', STATUS, filters.status, 'status'),
    // Vocabularies from /-/api/status (src/record.ts): 'none' filters rows with no value.
    select('error_type', ['any', 'none', ...(status.error_types ?? [])], filters.error_type, 'error'),
    select('usage_source', status.usage_sources ?? [], filters.usage_source, 'usage'),
    select('cost_source', [...(status.cost_sources ?? []), 'none'], filters.cost_source, 'cost'),
    h('button', { type: 'submit' }, 'Apply'),
    h(
      'label',
      { class: 'live' },
      h('input', { type: 'checkbox', name: 'live', checked: params.get('live') !== '0' }),
      'live',
    ),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const fd = new URLSearchParams();
    for (const k of REQUEST_FILTERS) fd.set(k, form.elements[k].value.trim());
    if (!form.elements.live.checked) fd.set('live', '0');
    go('/requests', fd);
  });
  form.elements.live.addEventListener('change', () => form.requestSubmit());
  const tbody = h('tbody', {});
  const table = h(
    'table',
    { class: 'requests', id: 'requests' },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        [
          'time (UTC)',
          'app',
          'model',
          'upstream',
          'operation',
          'status',
          'error',
          'in / cache r / cache w / out',
          'usage',
          'cost',
          'cost source',
          'duration',
        ].map((c) => h('th', {}, c)),
      ),
    ),
    tbody,
  );
  const more = h('button', { type: 'button', id: 'more', hidden: true }, 'Older requests');
  const note = h('p', { class: 'muted', id: 'count' });
  mount(view, h('h1', {}, 'Requests'), form, note, table, more);

  const query = { ...filters };
  let next = null;
  let shown = 0;
  const load = async (before) => {
    const page = await get('requests', { ...query, before });
    if (gen !== generation) return;
    if (!page.audit) {
      mount(view, h('h1', {}, 'Requests'), auditOffNote(page.audit_reason), table);
      return;
    }
    if (!before) tbody.replaceChildren();
    for (const r of page.rows) tbody.appendChild(requestRow(r));
    shown = before ? shown + page.rows.length : page.rows.length;
    next = page.next;
    more.hidden = next === null;
    note.textContent =
      shown === 0 ? 'No requests match.' : `${shown} request${shown === 1 ? '' : 's'}, newest first`;
  };
  more.addEventListener('click', () => load(next).catch((e) => view.appendChild(failure(e))));
  try {
    await load(undefined);
  } catch (e) {
    view.appendChild(failure(e));
  }
  // Live: the first page refreshes every 5 s while nobody paged further back.
  const tick = () => {
    liveTimer = setTimeout(async () => {
      if (gen !== generation) return;
      if (more.hidden || shown <= 100) await load(undefined).catch(() => {});
      tick();
    }, 5000);
  };
  if (form.elements.live.checked && status.audit) tick();
}

// ---- one request -------------------------------------------------------------------------------

const FIELD_GROUPS = [
  [
    'request',
    [
      'id',
      'ts_start',
      'ts_end',
      'duration_ms',
      'ttft_ms',
      'upstream',
      'method',
      'path',
      'operation',
      'request_model',
      'response_model',
      'app',
      'key_id',
      'user',
      'stream',
    ],
  ],
  [
    'response',
    [
      'http_status',
      'error_type',
      'error_message',
      'finish_reason',
      'upstream_request_id',
      'request_bytes',
      'response_bytes',
      'trace_id',
      'note',
    ],
  ],
  [
    'usage',
    [
      'usage_source',
      'input_tokens',
      'cache_read_tokens',
      'cache_write_tokens',
      'cache_write_1h_tokens',
      'output_tokens',
      'reasoning_tokens',
      'images',
    ],
  ],
  [
    'cost',
    [
      'cost',
      'cost_nanos',
      'currency',
      'cost_source',
      'price_id',
      'multiplier',
      'upstream_reported_cost',
      'upstream_reported_cost_nanos',
      'upstream_reported_currency',
    ],
  ],
];

function fieldValue(record, key) {
  const v = record[key];
  if ((key === 'ts_start' || key === 'ts_end') && typeof v === 'number') return `${time(v)} (${v})`;
  return show(v);
}

async function detailPage(id, gen) {
  mount(view, h('p', { class: 'muted' }, 'Loading…'));
  let d;
  try {
    d = await get(`requests/${encodeURIComponent(id)}`);
  } catch (e) {
    if (gen === generation) mount(view, h('p', {}, h('a', { href: '#/requests' }, '← requests')), failure(e));
    return;
  }
  if (gen !== generation) return;
  const r = d.record;
  const listed = new Set(FIELD_GROUPS.flatMap(([, keys]) => keys));
  // Any field this page does not know yet (a newer record) is still shown, at the end.
  const rest = Object.keys(r).filter((k) => !listed.has(k) && k !== 'cost_text');
  const groups = rest.length > 0 ? [...FIELD_GROUPS, ['other', rest]] : FIELD_GROUPS;
  const sections = groups.map(([title, keys]) =>
    h(
      'section',
      {},
      h('h2', {}, title),
      h(
        'dl',
        { class: 'fields' },
        keys.map((k) => [h('dt', {}, k), h('dd', { 'data-field': k }, fieldValue(r, k))]),
      ),
    ),
  );
  let bodies;
  if (d.bodies) {
    const b = d.bodies;
    bodies = h(
      'section',
      { id: 'bodies' },
      h('h2', {}, `captured bodies (redacted${b.truncated ? ', truncated' : ''})`),
      h('h3', {}, `request (${show(b.request_bytes)} bytes)`),
      h('pre', { class: 'body', id: 'body-request' }, b.request ?? UNKNOWN),
      h('h3', {}, `response (${show(b.response_bytes)} bytes)`),
      h('pre', { class: 'body', id: 'body-response' }, b.response ?? UNKNOWN),
    );
  } else {
    bodies = h(
      'p',
      { class: 'muted' },
      d.capture_bodies
        ? 'No bodies were captured for this request.'
        : 'Body capture is off (audit.capture_bodies).',
    );
  }
  mount(
    view,
    h('p', {}, h('a', { href: '#/requests' }, '← requests')),
    h('h1', {}, 'Request ', h('code', {}, r.id)),
    h(
      'p',
      { class: 'summary' },
      `${show(r.request_model)} · ${show(r.app)} · ${cost(r)} · ${show(r.usage_source)} usage`,
    ),
    h('div', { class: 'detail' }, sections),
    bodies,
  );
}

// ---- spend -------------------------------------------------------------------------------------

/** The report's rows (`tokenmeter report --format json` groups or totals), one column per key. */
function totalsTable(rows, keys) {
  return h(
    'table',
    { class: 'totals' },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        [...keys, 'currency', 'requests', 'cost', 'estimated', 'missing', 'unpriced', 'errors'].map((c) =>
          h('th', {}, c),
        ),
      ),
    ),
    h(
      'tbody',
      {},
      rows.map((t) =>
        h(
          'tr',
          {},
          keys.map((k) => h('td', {}, show(t[k]))),
          h('td', {}, show(t.currency)),
          h('td', { class: 'num' }, String(t.requests)),
          h('td', { class: 'num cost' }, show(t.cost)),
          h('td', { class: 'num' }, String(t.estimated)),
          h('td', { class: 'num' }, String(t.missing)),
          h('td', { class: 'num' }, String(t.unpriced)),
          h('td', { class: 'num' }, String(t.errors)),
        ),
      ),
    ),
  );
}

async function spendPage(params, gen) {
  const since = params.get('since') || '24h';
  const by = params.get('by') ?? 'model';
  const bucket = params.get('bucket') ?? '';
  const form = h(
    'form',
    { class: 'filters', id: 'spend-filters' },
    sinceMenu(since),
    menu(
      'by',
      'per',
      [
        ['', 'total'],
        ['app', 'app'],
        ['model', 'model'],
        ['upstream', 'upstream'],
      ],
      by,
    ),
    menu(
      'bucket',
      'bucket',
      [
        ['', 'auto'],
        ['hour', 'hour'],
        ['day', 'day'],
      ],
      bucket,
    ),
  );
  form.addEventListener('change', () =>
    go(
      '/spend',
      new URLSearchParams({
        since: form.elements.since.value,
        by: form.elements.by.value,
        bucket: form.elements.bucket.value,
      }),
    ),
  );
  mount(view, h('h1', {}, 'Spend'), form, h('p', { class: 'muted' }, 'Loading…'));
  let spend;
  try {
    spend = await get('spend', { since, by, bucket });
  } catch (e) {
    if (gen === generation) view.replaceChildren(h('h1', {}, 'Spend'), form, failure(e));
    return;
  }
  if (gen !== generation) return;
  if (!spend.audit) {
    mount(view, h('h1', {}, 'Spend'), form, auditOffNote(spend.audit_reason));
    return;
  }
  const currencies = [...new Set(spend.series.map((s) => s.currency))].sort();
  const unpriced = spend.caveats.unpriced;
  mount(
    view,
    h('h1', {}, 'Spend'),
    form,
    h(
      'p',
      { class: 'muted' },
      `${spend.from} .. ${spend.to}. Priced requests only; each currency on its own chart, never summed together.`,
    ),
    currencies.length === 0
      ? h('p', { class: 'notice' }, 'No priced spend in this window.')
      : currencies.map((c) => spendChart(spend, c)),
    unpriced > 0
      ? h(
          'p',
          { class: 'notice' },
          `${unpriced} unpriced request(s) in this window: their cost is unknown and in no sum (see Prices).`,
        )
      : null,
    h('h2', {}, 'Totals per currency'),
    totalsTable(spend.totals, []),
    by ? [h('h2', {}, `Per ${by}`), totalsTable(spend.groups, [by])] : null,
  );
}

// ---- budgets -----------------------------------------------------------------------------------

async function budgetsPage(_params, gen) {
  mount(view, h('h1', {}, 'Budgets'), h('p', { class: 'muted' }, 'Loading…'));
  let data;
  try {
    data = await get('budgets');
  } catch (e) {
    if (gen === generation) mount(view, h('h1', {}, 'Budgets'), failure(e));
    return;
  }
  if (gen !== generation) return;
  if (data.budgets.length === 0) {
    mount(
      view,
      h('h1', {}, 'Budgets'),
      h(
        'p',
        { class: 'notice' },
        'No budgets configured (budgets: in tokenmeter.yaml, see docs/budgets.md).',
      ),
    );
    return;
  }
  const scope = (s) =>
    Object.entries(s)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ') || 'all';
  const state = (b) =>
    b.exceeded
      ? b.action === 'block'
        ? 'EXCEEDED (blocking)'
        : 'EXCEEDED'
      : b.warnings_crossed.length > 0
        ? `warn ≥${Math.round(b.warnings_crossed.at(-1) * 100)}%`
        : 'ok';
  mount(
    view,
    h('h1', {}, 'Budgets'),
    data.from_audit_log
      ? null
      : h('p', { class: 'notice' }, 'No audit log: period-to-date spend counts only since this start.'),
    h(
      'table',
      { class: 'budgets', id: 'budgets' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          [
            'budget',
            'scope',
            'period',
            'since',
            'spent',
            'limit',
            'used',
            'projected',
            'action',
            'state',
          ].map((c) => h('th', {}, c)),
        ),
      ),
      h(
        'tbody',
        {},
        data.budgets.map((b) =>
          h(
            'tr',
            { class: b.exceeded ? 'err' : b.warnings_crossed.length > 0 ? 'warn' : undefined },
            h('td', {}, b.name),
            h('td', {}, scope(b.scope)),
            h('td', {}, `${b.period} (${b.timezone})`),
            h('td', {}, b.period_start_date),
            h('td', { class: 'num cost' }, `${b.spent} ${b.currency}`),
            h('td', { class: 'num' }, `${b.limit} ${b.currency}`),
            h(
              'td',
              { class: 'num' },
              h('meter', { min: 0, max: 1, value: Math.min(1, b.ratio ?? 1) }),
              b.ratio === null ? ' ∞' : ` ${(b.ratio * 100).toFixed(1)}%`,
            ),
            h('td', { class: 'num' }, `${b.projected} ${b.currency}`),
            h('td', {}, b.action),
            h('td', {}, state(b)),
          ),
        ),
      ),
    ),
  );
}

// ---- prices ------------------------------------------------------------------------------------

async function pricesPage(params, gen) {
  mount(view, h('h1', {}, 'Prices'), h('p', { class: 'muted' }, 'Loading…'));
  let data;
  try {
    data = await get('prices');
  } catch (e) {
    if (gen === generation) mount(view, h('h1', {}, 'Prices'), failure(e));
    return;
  }
  if (gen !== generation) return;
  const unpriced = !data.audit
    ? auditOffNote(data.audit_reason)
    : data.unpriced.length === 0
      ? h('p', { class: 'muted' }, `No unpriced requests since ${data.from}.`)
      : h(
          'table',
          { id: 'unpriced' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['model', 'upstream', 'requests', 'last seen', 'why'].map((c) => h('th', {}, c)),
            ),
          ),
          h(
            'tbody',
            {},
            data.unpriced.map((u) =>
              h(
                'tr',
                {},
                h('td', { class: 'model' }, show(u.model)),
                h('td', {}, u.upstream),
                h('td', { class: 'num' }, String(u.requests)),
                h('td', {}, u.last_seen),
                h('td', {}, show(u.reason)),
              ),
            ),
          ),
        );
  const filter = h('input', {
    type: 'search',
    placeholder: 'filter models',
    value: params.get('q') ?? '',
    id: 'price-filter',
  });
  const tbody = h('tbody', {});
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    tbody.replaceChildren(
      ...data.prices
        .filter((p) => q === '' || p.model.toLowerCase().includes(q) || p.price_id.toLowerCase().includes(q))
        .map((p) =>
          h(
            'tr',
            {},
            h('td', { class: 'model' }, p.model),
            h('td', {}, p.upstream ?? (p.hosts ? p.hosts.join(',') : p.origin === 'user' ? 'user' : 'all')),
            h('td', {}, p.applies_to.join(', ') || UNKNOWN),
            h('td', {}, p.currency),
            h('td', {}, p.unit),
            [p.input, p.output, p.cache_read, p.cache_write, p.cache_write_1h, p.reasoning].map((v) =>
              h('td', { class: 'num' }, v),
            ),
            h(
              'td',
              { class: 'num' },
              [p.per_request, p.per_image].filter((v) => v !== null).join(' / ') || UNKNOWN,
            ),
            h('td', {}, show(p.effective_from)),
            h('td', { class: 'small' }, p.price_id),
          ),
        ),
    );
  };
  filter.addEventListener('input', render);
  render();
  mount(
    view,
    h('h1', {}, 'Prices'),
    h('h2', {}, 'Models seen unpriced'),
    unpriced,
    h('h2', {}, 'Effective price table'),
    h(
      'p',
      { class: 'muted' },
      'In match order: your files first, then the bundled presets (as `tokenmeter prices list`). Prices per unit of tokens.',
    ),
    filter,
    h(
      'table',
      { id: 'prices' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          [
            'model',
            'scope',
            'upstreams',
            'cur',
            'unit',
            'input',
            'output',
            'cache read',
            'cache write',
            'cw 1h',
            'reasoning',
            'fees',
            'from',
            'price id',
          ].map((c) => h('th', {}, c)),
        ),
      ),
      tbody,
    ),
  );
}

// ---- reconcile ---------------------------------------------------------------------------------

/** Billed vs metered per upstream and key, as `tokenmeter reconcile` prints it (docs/reconcile.md). */
async function reconcilePage(params, gen) {
  const since = params.get('since') || '24h';
  const upstream = params.get('upstream') ?? '';
  const names = (status?.upstreams ?? []).map((u) => u.name);
  const form = h(
    'form',
    { class: 'filters', id: 'reconcile-filters' },
    sinceMenu(since),
    select('upstream', names, upstream, 'upstream'),
  );
  form.addEventListener('change', () =>
    go(
      '/reconcile',
      new URLSearchParams({ since: form.elements.since.value, upstream: form.elements.upstream.value }),
    ),
  );
  const title = h('h1', {}, 'Billed vs metered');
  mount(view, title, form, h('p', { class: 'muted' }, 'Loading…'));
  let data;
  try {
    data = await get('reconcile', { since, upstream });
  } catch (e) {
    if (gen === generation) view.replaceChildren(title, form, failure(e));
    return;
  }
  if (gen !== generation) return;
  if (!data.audit) {
    mount(view, title, form, auditOffNote(data.audit_reason));
    return;
  }
  if (data.lines.length === 0) {
    mount(
      view,
      title,
      form,
      h(
        'p',
        { class: 'notice' },
        'Nothing to reconcile in this window: no billing snapshots and no gateway-reported costs (billing: on an upstream, see docs/reconcile.md).',
      ),
    );
    return;
  }
  const drift = (l) => (l.ratio === null ? UNKNOWN : `${((Number(l.ratio) - 1) * 100).toFixed(1)}%`);
  const money = (v, c) => (v === null ? UNKNOWN : `${v} ${c}`);
  mount(
    view,
    title,
    form,
    h(
      'table',
      { class: 'reconcile', id: 'reconcile' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          [
            'upstream',
            'key',
            'source',
            'billed',
            'metered',
            'drift',
            'requests',
            'estimated',
            'missing',
            'unpriced',
            'unanswered',
          ].map((c) => h('th', {}, c)),
        ),
      ),
      h(
        'tbody',
        {},
        data.lines.map((l) =>
          h(
            'tr',
            { class: l.drifting ? 'warn' : undefined },
            h('td', {}, l.upstream),
            h('td', {}, l.scope === 'upstream' ? `${l.key_id ?? UNKNOWN} (all keys)` : (l.key_id ?? UNKNOWN)),
            h('td', {}, l.source),
            h('td', { class: 'num cost' }, money(l.billed, l.currency)),
            h('td', { class: 'num cost' }, money(l.metered, l.currency)),
            h('td', { class: 'num' }, drift(l)),
            h('td', { class: 'num' }, String(l.requests)),
            h('td', { class: 'num' }, String(l.estimated.requests)),
            h('td', { class: 'num' }, String(l.missing)),
            h('td', { class: 'num' }, String(l.unpriced)),
            h('td', { class: 'num' }, String(l.unanswered.requests)),
          ),
        ),
      ),
    ),
    data.lines.map((l) => [
      h('h2', {}, `${l.upstream} key ${l.key_id ?? 'none'} (${l.source})`),
      h(
        'ul',
        { class: 'explanation' },
        l.explanation.map((e) => h('li', {}, e)),
      ),
    ]),
  );
}

// ---- fleet -------------------------------------------------------------------------------------

const FLEET_BY = [
  ['host', 'host'],
  ['host,app', 'host, app'],
  ['host,model', 'host, model'],
  ['app', 'app'],
  ['model', 'model'],
  ['upstream', 'upstream'],
  ['', 'total only'],
];

/** How long ago, roughly: 42 s, 17 min, 5.2 h, 3.0 d. */
function age(ms) {
  if (ms < 0) return 'in the future (clock skew?)';
  const s = ms / 1000;
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

/** This host's own shipper, from the answer (also sent with a 503 when Postgres is down). */
function thisHostSection(data) {
  const s = data.shipper;
  return [
    h('h2', {}, `This host (${data.this_host})`),
    s
      ? h(
          'dl',
          { class: 'fields', id: 'shipper' },
          [
            ['shipper', s.state],
            ['rows not yet shipped', show(s.lag_rows)],
            ['shipped since start', String(s.shipped)],
            ['failed passes in a row', String(s.failures)],
            ['last reached Postgres', show(s.last_success)],
          ].map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
        )
      : h('p', { class: 'muted' }, 'This host does not ship (no audit DB file).'),
  ];
}

function shippingTable(hosts) {
  if (hosts.length === 0) return h('p', { class: 'muted' }, 'No host has shipped rows yet.');
  return h(
    'table',
    { id: 'fleet-hosts' },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        ['host', 'rows in Postgres', 'newest record (UTC)', 'age'].map((c) => h('th', {}, c)),
      ),
    ),
    h(
      'tbody',
      {},
      hosts.map((x) =>
        h(
          'tr',
          { 'data-host': x.host },
          h('td', {}, x.host),
          h('td', { class: 'num' }, String(x.rows)),
          h('td', {}, time(x.newest_ts_start)),
          h('td', { class: 'num' }, age(x.newest_age_ms)),
        ),
      ),
    ),
  );
}

/** Every host at once from the fleet Postgres: `tokenmeter report --fleet`, and who ships what. */
async function fleetPage(params, gen) {
  const since = params.get('since') || '24h';
  // A link may name any window the API takes (`until` too); a change of menu keeps it.
  const until = params.get('until') ?? '';
  const by = params.get('by') ?? 'host';
  const form = h(
    'form',
    { class: 'filters', id: 'fleet-filters' },
    sinceMenu(since),
    menu('by', 'per', FLEET_BY, by),
  );
  form.addEventListener('change', () =>
    go(
      '/fleet',
      new URLSearchParams({ since: form.elements.since.value, until, by: form.elements.by.value }),
    ),
  );
  const title = h('h1', {}, 'Fleet');
  mount(view, title, form, h('p', { class: 'muted' }, 'Loading…'));
  let data;
  try {
    data = await get('fleet', { since, until, by });
  } catch (e) {
    if (gen !== generation) return;
    // Postgres down (503) still says how this host's shipper is doing.
    view.replaceChildren(title, form, failure(e));
    if (e.body?.this_host) view.append(...thisHostSection(e.body));
    return;
  }
  if (gen !== generation) return;
  const keys = by === '' ? [] : by.split(',');
  const c = data.converted;
  mount(
    view,
    title,
    form,
    h(
      'p',
      { class: 'muted' },
      `${data.from} .. ${data.to}: every host's rows shipped to ${data.postgres} (a host's unshipped backlog is not in here yet).`,
    ),
    h('h2', {}, 'Totals per currency'),
    data.totals.length === 0
      ? h('p', { class: 'notice' }, 'No requests in this window.')
      : totalsTable(data.totals, []),
    c
      ? h(
          'p',
          {},
          `Converted total: ${c.cost} ${c.currency}`,
          c.unconverted.length > 0 ? ` (excludes ${c.unconverted.join(', ')}: no FX rate)` : '',
        )
      : null,
    keys.length > 0 ? [h('h2', {}, `Per ${keys.join(', ')}`), totalsTable(data.groups, keys)] : null,
    h('h2', {}, 'Shipping per host'),
    h(
      'p',
      { class: 'muted' },
      'All rows in Postgres, any time. A host whose newest record is far older than the others has stopped shipping (or had no traffic): check its tokenmeter_fleet_ship_lag_rows.',
    ),
    shippingTable(data.hosts),
    thisHostSection(data),
  );
}

// ---- shell -------------------------------------------------------------------------------------

async function render() {
  clearTimeout(liveTimer);
  const gen = ++generation;
  const { parts, params } = route();
  const page = parts[0] ?? 'requests';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page);
  if (page === 'requests' && parts[1]) return detailPage(parts[1], gen);
  if (page === 'spend') return spendPage(params, gen);
  if (page === 'budgets') return budgetsPage(params, gen);
  if (page === 'prices') return pricesPage(params, gen);
  if (page === 'reconcile') return reconcilePage(params, gen);
  if (page === 'fleet') return fleetPage(params, gen);
  return requestsPage(params, gen);
}

async function start() {
  try {
    status = await get('status');
    document.getElementById('status').textContent =
      `v${status.version} · ${status.upstreams.map((u) => `${u.name}=${u.host}`).join(', ')}`;
    document.getElementById('logout').hidden = !status.auth;
    // Only with fleet.postgres configured: there is nothing to show otherwise.
    document.querySelector('nav a[data-page=fleet]').hidden = !status.fleet;
    if (!status.audit) {
      banner.textContent = `Audit log off: ${status.audit_reason}`;
      banner.hidden = false;
    }
  } catch (e) {
    banner.textContent = `Could not reach the console API: ${e.message}`;
    banner.hidden = false;
  }
  window.addEventListener('hashchange', render);
  await render();
}

void start();
