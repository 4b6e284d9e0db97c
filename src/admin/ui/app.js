// The triage page: a keyboard-first view of the triage queue, one failure, the issues and
// per-class charts, built on the JSON API under /api/v1. Plain DOM, no framework; every piece
// of telemetry is inserted as text, never as markup.

const SVG_NS = 'http://www.w3.org/2000/svg';
const QUEUE_LIMIT = 200;
const STATES = ['open', 'dispatched', 'shipped', 'verified', 'regressed', 'ignored'];
const STAGES = ['classified', 'dispatched', 'shipped', 'verified'];
const WINDOWS = {
  '24h': { step: '1h', label: '24 hours by hour' },
  '7d': { step: '1d', label: '7 days by day' },
};
const REASONS = {
  fallback: 'no rule decided',
  low_confidence: 'low confidence',
  audit: 'audit sample',
};

const state = {
  taxonomy: null,
  view: 'queue',
  queue: [],
  queueSel: 0,
  issues: [],
  issueSel: 0,
  failure: null,
  back: '#/queue',
  busy: false,
  seq: 0,
};

// ---- DOM helpers ---------------------------------------------------------------------------

/** An element: `attrs` are attributes (`class`, `aria-*`, `data-*`…) or `on<event>` handlers;
 * children are nodes, strings (inserted as text), arrays, or null (skipped). */
function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, like `h`. */
function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const $ = (sel) => document.querySelector(sel);

// ---- formatting ----------------------------------------------------------------------------

/** Seconds in human units: 42 s, 4m 12s, 3h 05m, 2d 4h. */
function human(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  if (seconds > 0 && seconds < 0.5) return '<1 s';
  const t = Math.max(0, Math.round(seconds));
  if (t < 60) return `${t} s`;
  if (t < 3600) return `${Math.floor(t / 60)}m ${String(t % 60).padStart(2, '0')}s`;
  if (t < 86400) {
    const m = Math.floor((t % 3600) / 60);
    return `${Math.floor(t / 3600)}h${m ? ` ${String(m).padStart(2, '0')}m` : ''}`;
  }
  const hours = Math.floor((t % 86400) / 3600);
  return `${Math.floor(t / 86400)}d${hours ? ` ${hours}h` : ''}`;
}

/** How long ago an RFC 3339 time was. */
function age(rfc3339) {
  const t = Date.parse(rfc3339);
  if (Number.isNaN(t)) return '—';
  return human((Date.now() - t) / 1000);
}

function percent(x) {
  return typeof x === 'number' ? `${Math.round(x * 100)}%` : '—';
}

/** A span duration from nanoseconds. */
function duration(ns) {
  if (!(ns > 0)) return '—';
  const ms = ns / 1e6;
  if (ms < 1) return `${Math.max(1, Math.round(ns / 1000))} µs`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return human(ms / 1000);
}

function plural(n, word) {
  if (n === 1) return `${n} ${word}`;
  return `${n} ${word}${/(s|ch|sh|x)$/.test(word) ? 'es' : 's'}`;
}

function localTime(rfc3339) {
  const t = new Date(rfc3339);
  return Number.isNaN(t.getTime()) ? rfc3339 : t.toLocaleString();
}

// ---- API -----------------------------------------------------------------------------------

/** Where the page keeps the admin API's bearer token: this tab only, gone when it closes. */
const TOKEN_KEY = 'triage-loop.token';

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (e) {
    showError(`cannot keep the token in this tab: ${e.message}`);
  }
  $('#forget-token').hidden = !token;
}

/** The API refused the request for want of a (right) token. */
class AuthError extends Error {}

/** GET (or POST with `body`) a JSON API path; an error answer becomes an Error with its text.
 * The stored token goes along as `Authorization: Bearer`; a 401 asks for one. */
async function api(path, body) {
  const headers = { accept: 'application/json' };
  const token = storedToken();
  if (token) headers.authorization = `Bearer ${token}`;
  const init = body === undefined
    ? { headers }
    : {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    };
  const what = `${init.method || 'GET'} ${path}`;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new Error(`${what}: ${e.message} (is triage-loop still running?)`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (res.status === 401) {
    const why = token ? 'The token was refused.' : 'This triage-loop requires a token.';
    showTokenPrompt(why);
    throw new AuthError(`${what}: 401 ${why}`);
  }
  if (!res.ok) {
    const why = (data && data.error) || text.slice(0, 300) || res.statusText;
    throw new Error(`${what}: ${res.status} ${why}`);
  }
  if (data === null) throw new Error(`${what}: the answer is not JSON`);
  return data;
}

/** Replaces the view with a field for the admin token; saving it reloads the view. */
function showTokenPrompt(why) {
  state.seq += 1;
  const input = h('input', {
    type: 'password',
    id: 'token',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-describedby': 'token-why',
  });
  const save = () => {
    const t = input.value.trim();
    if (!t) return;
    storeToken(t);
    state.taxonomy = null;
    route();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      e.stopPropagation();
      save();
    }
  });
  const main = $('#main');
  main.removeAttribute('aria-busy');
  main.replaceChildren(h('section', { class: 'token-prompt', 'aria-labelledby': 'token-title' },
    h('h1', { id: 'token-title' }, 'Admin token'),
    h('p', { id: 'token-why' }, why,
      ' Paste the bearer token of this triage-loop (its ',
      h('code', {}, 'extensions.triage_admin.auth'),
      '). It is kept in this tab only and sent with each API request.'),
    h('p', {},
      h('label', { for: 'token' }, 'Token '), input, ' ',
      h('button', { type: 'button', id: 'token-save', onclick: save }, 'Use token')),
  ));
  clearError();
  document.title = 'Admin token · triage-loop';
  input.focus();
}

async function taxonomy() {
  if (!state.taxonomy) state.taxonomy = await api('/api/v1/taxonomy');
  return state.taxonomy;
}

function classInfo(name) {
  return (state.taxonomy?.classes || []).find((c) => c.name === name);
}

// ---- messages ------------------------------------------------------------------------------

function showError(message) {
  const el = $('#error');
  el.replaceChildren(
    h('strong', {}, 'Error: '),
    String(message),
    ' ',
    h('button', { type: 'button', class: 'link', onclick: () => { el.hidden = true; } }, 'dismiss'),
  );
  el.hidden = false;
}

function clearError() {
  $('#error').hidden = true;
}

function flash(kind, ...content) {
  const el = $('#flash');
  el.className = kind;
  el.replaceChildren(...content);
  el.hidden = false;
}

// ---- routing -------------------------------------------------------------------------------

function parseHash() {
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  const parts = path.split('/').filter(Boolean);
  return { parts, params: new URLSearchParams(query || '') };
}

/** Renders the view the location names. Older renders still in flight are dropped. */
async function route() {
  const seq = ++state.seq;
  const { parts, params } = parseHash();
  const main = $('#main');
  main.setAttribute('aria-busy', 'true');
  try {
    let view;
    if (parts[0] === 'failure' && parts[1]) view = await failureView(parts[1]);
    else if (parts[0] === 'issues') view = await issuesView(params);
    else if (parts[0] === 'charts') view = await chartsView(params);
    else view = await queueView();
    if (seq !== state.seq) return;
    clearError();
    main.replaceChildren(view.node);
    if (view.name !== state.view || view.name === 'failure') window.scrollTo(0, 0);
    state.view = view.name;
    for (const a of document.querySelectorAll('nav a')) {
      const list = state.back.startsWith('#/issues') ? 'issues' : 'queue';
      const here = a.dataset.view === (view.name === 'failure' ? list : view.name);
      if (here) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `${view.title} · triage-loop`;
    if (view.after) view.after();
  } catch (e) {
    if (seq === state.seq && !(e instanceof AuthError)) showError(e.message);
  } finally {
    if (seq === state.seq) main.removeAttribute('aria-busy');
  }
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---- queue view ----------------------------------------------------------------------------

async function queueView() {
  const [data, tax] = await Promise.all([api(`/api/v1/queue?limit=${QUEUE_LIMIT}`), taxonomy()]);
  const queue = data.queue || [];
  const prev = state.queue[state.queueSel]?.failure_id;
  state.queue = queue;
  const keep = queue.findIndex((q) => q.failure_id === prev);
  state.queueSel = keep >= 0 ? keep : Math.min(state.queueSel, Math.max(0, queue.length - 1));
  const title = h('h1', {}, 'Triage queue ', h('span', { class: 'count' }, `${queue.length}`));
  if (queue.length === 0) {
    return {
      name: 'queue',
      title: 'Queue',
      node: h('section', {}, title,
        h('div', { class: 'empty' },
          h('p', {}, h('strong', {}, 'Nothing is waiting for a person.')),
          h('p', {}, 'A failure lands here when no rule decided its class (it got the fallback class), ',
            `when its class was decided with confidence under ${percent(tax.min_confidence)}, `,
            'or when it was drawn as an audit sample of confident decisions. ',
            'Labelled failures leave the queue; the issue list (', h('kbd', {}, 'i'), ') shows everything.'))),
    };
  }
  const byReason = {};
  for (const q of queue) byReason[q.reason] = (byReason[q.reason] || 0) + 1;
  const rows = queue.map((q, i) => h('tr', {
    'data-index': i,
    'data-failure': q.failure_id,
    tabindex: '-1',
    onclick: () => { state.queueSel = i; openQueued(); },
  },
  h('td', {}, h('span', { class: `reason ${q.reason}` }, REASONS[q.reason] || q.reason)),
  h('td', {}, h('span', { class: 'class' }, q.class), h('div', { class: 'sub' }, `${q.source} · ${percent(q.confidence)}`)),
  h('td', {}, q.agent || '—', h('div', { class: 'sub' }, q.service || '')),
  h('td', { class: 'mono' }, q.operation || '—'),
  h('td', { class: 'summary' }, q.summary || '—'),
  h('td', { class: 'num' }, q.occurrences),
  h('td', { class: 'num', title: localTime(q.observed) }, age(q.observed))));
  const counts = Object.entries(byReason).map(([r, n]) => `${n} ${REASONS[r] || r}`).join(' · ');
  return {
    name: 'queue',
    title: 'Queue',
    node: h('section', {}, title,
      h('p', { class: 'muted' }, `${counts}. Oldest first. `, h('kbd', {}, 'j'), '/', h('kbd', {}, 'k'), ' move, ',
        h('kbd', {}, 'Enter'), ' opens.'),
      h('table', { class: 'list', id: 'queue' },
        h('caption', { class: 'sr-only' }, 'Failures waiting for a label'),
        h('thead', {}, h('tr', {},
          ['Why', 'Class', 'Agent', 'Operation', 'Summary', 'Occ.', 'Age'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, rows))),
    after: () => select('#queue', state.queueSel),
  };
}

/** Marks row `i` of a list table as selected and focuses it. */
function select(table, i) {
  const rows = document.querySelectorAll(`${table} tbody tr`);
  rows.forEach((r, j) => {
    r.classList.toggle('sel', j === i);
    if (j === i) r.setAttribute('aria-current', 'true');
    else r.removeAttribute('aria-current');
  });
  if (rows[i]) {
    rows[i].focus({ preventScroll: true });
    rows[i].scrollIntoView({ block: 'nearest' });
  }
}

function openQueued() {
  const q = state.queue[state.queueSel];
  if (!q) return;
  state.back = '#/queue';
  go(`#/failure/${q.failure_id}`);
}

// ---- failure view --------------------------------------------------------------------------

async function failureView(id) {
  const [data, tax] = await Promise.all([api(`/api/v1/failures/${encodeURIComponent(id)}`), taxonomy()]);
  const f = data.failure;
  const issue = data.issue;
  state.failure = f;
  const root = f.detail?.root;
  const pos = state.queue.findIndex((q) => q.failure_id === f.id);
  const heading = root?.name || f.detail?.tree?.find((n) => n.root_cause)?.name || `failure ${f.id}`;
  const node = h('section', { class: 'failure' },
    h('p', { class: 'crumbs' },
      h('a', { href: state.back }, h('kbd', {}, 'Esc'), ' back'),
      pos >= 0 ? ` · queue ${pos + 1} of ${state.queue.length}` : '',
      f.queue_reason ? ' · ' : '',
      f.queue_reason ? h('span', { class: `reason ${f.queue_reason}` }, REASONS[f.queue_reason] || f.queue_reason) : null),
    h('h1', {}, h('span', { class: 'mono' }, heading)),
    h('p', { class: 'muted' },
      `failure ${f.id} · issue ${f.issue_id} · ${f.agent || 'no agent'} · ${f.service}`,
      f.service_version ? ` ${f.service_version}` : '',
      ` · observed ${age(f.observed)} ago (${localTime(f.observed)})`),
    h('div', { class: 'cols' },
      h('div', { class: 'col-main' },
        traceSection(f),
        signalsSection(f),
        attributesSection(root)),
      h('aside', { class: 'col-side' },
        decisionSection(f, issue),
        labelSection(f, tax),
        judgementSection(f.judgement),
        issueSection(issue))));
  return { name: 'failure', title: `Failure ${f.id}`, node, after: () => $('#main').focus({ preventScroll: true }) };
}

function section(title, ...body) {
  const id = `h-${title.toLowerCase().replace(/[^a-z]+/g, '-')}`;
  return h('section', { class: 'panel', 'aria-labelledby': id }, h('h2', { id }, title), ...body);
}

/** Only http(s) links are followed; anything else is shown as text. */
function safeUrl(url) {
  return typeof url === 'string' && /^https?:\/\//i.test(url) ? url : null;
}

function traceSection(f) {
  const url = safeUrl(f.trace_url);
  const link = url
    ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'trace-link' }, h('kbd', {}, 't'), ' open trace ↗')
    : h('span', { class: 'muted' }, 'no trace link (set processors.failure_triage.trace_url_template)');
  const head = h('p', { class: 'trace-head' }, 'trace ', h('span', { class: 'mono' }, f.trace_id), ' · ', link);
  const detail = f.detail;
  if (!detail || !Array.isArray(detail.tree) || detail.tree.length === 0) {
    return section('Trace', head, h('p', { class: 'empty' },
      'No span tree was kept for this failure: it is kept for queued failures and for the first failure of each issue.'));
  }
  return section('Trace', head, spanTree(detail),
    detail.truncated > 0 ? h('p', { class: 'muted' }, `${plural(detail.truncated, 'more span')} not shown.`) : null);
}

/** The spans in depth-first order with their depth; orphans start new roots. */
function treeOrder(nodes) {
  const ids = new Set(nodes.map((n) => n.span_id));
  const kids = new Map();
  const roots = [];
  for (const n of nodes) {
    if (n.parent_id && ids.has(n.parent_id) && n.parent_id !== n.span_id) {
      if (!kids.has(n.parent_id)) kids.set(n.parent_id, []);
      kids.get(n.parent_id).push(n);
    } else roots.push(n);
  }
  const out = [];
  const seen = new Set();
  const walk = (n, depth) => {
    if (seen.has(n.span_id)) return;
    seen.add(n.span_id);
    out.push({ n, depth });
    for (const k of kids.get(n.span_id) || []) walk(k, depth + 1);
  };
  for (const r of roots) walk(r, 0);
  for (const n of nodes) walk(n, 0); // a parent cycle: shown flat rather than lost
  return out;
}

function spanTree(detail) {
  const order = treeOrder(detail.tree);
  const starts = detail.tree.map((n) => n.start_unix_nano).filter((t) => t > 0);
  const ends = detail.tree.map((n) => n.end_unix_nano).filter((t) => t > 0);
  const t0 = starts.length ? Math.min(...starts) : 0;
  const span = Math.max(1, (ends.length ? Math.max(...ends) : t0) - t0);
  const rows = order.map(({ n, depth }) => {
    const known = n.start_unix_nano > 0 && n.end_unix_nano >= n.start_unix_nano;
    const name = h('td', { class: 'span-name' },
      h('span', { class: 'mono' }, n.name),
      ' ', h('span', { class: 'kind' }, n.kind),
      n.root_cause ? h('span', { class: 'badge root' }, 'root cause') : null);
    name.style.setProperty('--depth', String(Math.min(depth, 30)));
    const bar = h('div', { class: 'bar' });
    if (known) {
      bar.style.setProperty('--left', `${(100 * (n.start_unix_nano - t0)) / span}%`);
      bar.style.setProperty('--width', `${Math.max(0.4, (100 * (n.end_unix_nano - n.start_unix_nano)) / span)}%`);
    }
    const sig = n.signal
      ? [h('span', { class: 'class' }, n.class || ''), ' ', `${n.signal.kind}: ${n.signal.name}`,
        n.signal.message ? h('div', { class: 'sub' }, n.signal.message) : null]
      : null;
    return h('tr', { class: [n.root_cause ? 'root-cause' : '', n.signal ? 'has-signal' : ''].join(' ').trim() || null, 'aria-level': depth + 1 },
      name,
      h('td', { class: 'num' }, known ? duration(n.end_unix_nano - n.start_unix_nano) : '—'),
      h('td', { class: 'timeline', 'aria-hidden': 'true' }, known ? bar : null),
      h('td', { class: 'span-signal' }, sig));
  });
  return h('table', { class: 'spans' },
    h('caption', { class: 'sr-only' }, 'Spans of the trace, indented under their parents; the root cause is marked'),
    h('thead', {}, h('tr', {}, ['Span', 'Duration', 'Timeline', 'Signal'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows));
}

function signalsSection(f) {
  const signals = f.detail?.root?.signals;
  if (Array.isArray(signals) && signals.length > 0) {
    return section('Signals',
      h('table', { class: 'signals' },
        h('thead', {}, h('tr', {}, ['Kind', 'Name', 'Label', 'Score', 'Message'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, signals.map((sg) => h('tr', {},
          h('td', {}, sg.kind), h('td', { class: 'mono' }, sg.name),
          h('td', {}, sg.label ?? '—'), h('td', { class: 'num' }, typeof sg.score === 'number' ? sg.score.toFixed(3) : '—'),
          h('td', {}, sg.message || '—'))))));
  }
  return section('Signal', valueTable(f.signal));
}

/** A JSON value as a key/value table (nested values as compact JSON). */
function valueTable(v) {
  if (v === null || v === undefined) return h('p', { class: 'empty' }, 'none recorded');
  if (typeof v !== 'object' || Array.isArray(v)) return h('pre', {}, JSON.stringify(v, null, 2));
  return h('table', { class: 'kv' }, h('tbody', {}, Object.entries(v).map(([k, x]) => h('tr', {},
    h('th', { scope: 'row' }, k),
    h('td', {}, typeof x === 'object' && x !== null ? JSON.stringify(x) : String(x))))));
}

function attributesSection(root) {
  if (!root || !Array.isArray(root.attributes) || root.attributes.length === 0) {
    return section('Attributes', h('p', { class: 'empty' }, 'No attributes were kept for the root cause span.'));
  }
  return section('Attributes of the root cause',
    h('table', { class: 'kv attrs' }, h('tbody', {}, root.attributes.map(([k, v]) => h('tr', {},
      h('th', { scope: 'row', class: 'mono' }, k), h('td', { class: 'mono' }, v))))));
}

function decisionSection(f, issue) {
  const info = classInfo(f.class);
  return section('Current class',
    h('p', { class: 'decision' }, h('span', { class: 'class big' }, f.class)),
    h('dl', {},
      h('dt', {}, 'source'), h('dd', {}, f.source),
      h('dt', {}, 'confidence'), h('dd', {}, percent(f.confidence)),
      h('dt', {}, 'rule'), h('dd', { class: 'mono' }, f.rule || (f.source === 'rule' ? 'none (fallback)' : '—')),
      h('dt', {}, 'remediation'), h('dd', {}, issue?.remediation || info?.remediation || '—'),
      f.resolved ? [h('dt', {}, 'resolved'), h('dd', {}, `${age(f.resolved)} ago${f.resolved_by ? ` by ${f.resolved_by}` : ''}`)] : null,
      issue && issue.class !== f.class ? [h('dt', {}, 'issue now'), h('dd', {}, `${issue.class} (${issue.source})`)] : null));
}

function labelSection(f, tax) {
  const classes = tax.classes || [];
  const current = f.class;
  // Keys 1..9 for the first nine classes; any further class is a button without a key.
  const buttons = classes.map((c, i) => h('li', {},
    h('button', {
      type: 'button',
      class: `choice${c.name === current ? ' current' : ''}`,
      'data-class': c.name,
      'aria-keyshortcuts': i < 9 ? String(i + 1) : null,
      onclick: () => label(c.name),
    },
    h('kbd', {}, i < 9 ? String(i + 1) : '·'),
    h('span', { class: 'choice-name' }, c.name, c.name === current ? h('span', { class: 'sub' }, ' current') : null),
    h('span', { class: 'choice-rem' }, `→ ${c.remediation}${c.owner ? ` · ${c.owner}` : ''}`),
    c.description ? h('span', { class: 'choice-desc' }, c.description) : null)));
  return section('Label',
    h('p', { class: 'muted' }, 'The label covers the whole issue; a different class re-routes its remediation.'),
    h('ol', { class: 'choices' }, buttons),
    h('label', { for: 'note', class: 'note-label' }, h('kbd', {}, 'n'), ' note'),
    h('input', {
      id: 'note', type: 'text', maxlength: '2000', autocomplete: 'off', spellcheck: 'true',
      placeholder: 'why (optional); Enter keeps it, then press a class key',
    }));
}

function judgementSection(j) {
  if (!j) return null;
  return section('Judgement', valueTable(j));
}

function issueSection(issue) {
  if (!issue) return null;
  const l = issue.latency || {};
  return section(`Issue ${issue.id}`,
    h('dl', {},
      h('dt', {}, 'state'), h('dd', {}, h('span', { class: `state ${issue.state}` }, issue.state), ` · cycle ${issue.cycle}`),
      h('dt', {}, 'class'), h('dd', {}, `${issue.class} (${issue.source}, ${percent(issue.confidence)})`),
      h('dt', {}, 'occurrences'), h('dd', {}, issue.occurrences),
      h('dt', {}, 'first seen'), h('dd', {}, `${age(issue.first_seen)} ago`),
      h('dt', {}, 'loop'), h('dd', {}, STAGES.map((st) => `${st} ${human(l[`${st}_s`])}`).join(' · '))));
}

/** POSTs the label, says what happened, then opens the next queued failure. */
async function label(cls) {
  const f = state.failure;
  if (!f || state.busy || state.view !== 'failure') return;
  state.busy = true;
  const note = $('#note')?.value.trim() || '';
  for (const b of document.querySelectorAll('.choice')) b.disabled = true;
  try {
    const r = await api(`/api/v1/failures/${encodeURIComponent(f.id)}/label`, note ? { class: cls, note } : { class: cls });
    const issue = r.issue || {};
    const from = r.label?.from_class ?? f.class;
    if (r.rerouted) {
      flash('ok rerouted',
        h('strong', {}, 'Re-routed'),
        ` issue ${issue.id}: ${from} → ${issue.class} (${issue.source}), remediation ${issue.remediation}; `,
        `${plural(r.superseded ?? 0, 'dispatch')} superseded, ${plural(r.dispatches_enqueued ?? 0, 'dispatch')} enqueued.`);
    } else {
      flash('ok confirmed',
        h('strong', {}, 'Confirmed'),
        ` issue ${issue.id} as ${issue.class} (${issue.source}).`);
    }
    await next(f);
  } catch (e) {
    showError(e.message);
    for (const b of document.querySelectorAll('.choice')) b.disabled = false;
  } finally {
    state.busy = false;
  }
}

/** The queued failure after `done` (in the queue's order), or the queue when none is left. */
async function next(done) {
  const before = state.queue.map((q) => q.failure_id);
  const data = await api(`/api/v1/queue?limit=${QUEUE_LIMIT}`);
  const rest = (data.queue || []).filter((q) => q.failure_id !== done.id && q.issue_id !== done.issue_id);
  state.queue = data.queue || [];
  const at = before.indexOf(done.id);
  const after = rest.find((q) => before.indexOf(q.failure_id) > at) || rest[0];
  if (after) {
    state.queueSel = state.queue.indexOf(after);
    go(`#/failure/${after.failure_id}`);
  } else {
    state.queueSel = 0;
    go('#/queue');
  }
}

// ---- issues view ---------------------------------------------------------------------------

async function issuesView(params) {
  const tax = await taxonomy();
  const fState = params.get('state') || '';
  const fClass = params.get('class') || '';
  const q = new URLSearchParams();
  if (fState) q.set('state', fState);
  if (fClass) q.set('class', fClass);
  const data = await api(`/api/v1/issues${q.toString() ? `?${q}` : ''}`);
  const issues = data.issues || [];
  state.issues = issues;
  state.issueSel = Math.min(state.issueSel, Math.max(0, issues.length - 1));
  const filter = (name, value, options) => h('label', {}, `${name} `,
    h('select', {
      id: `filter-${name}`,
      onchange: () => {
        const p = new URLSearchParams();
        const st = $('#filter-state').value;
        const cl = $('#filter-class').value;
        if (st) p.set('state', st);
        if (cl) p.set('class', cl);
        go(`#/issues${p.toString() ? `?${p}` : ''}`);
      },
    }, h('option', { value: '' }, 'any'), options.map((o) => h('option', { value: o, selected: o === value }, o))));
  const filters = h('p', { class: 'filters' }, h('kbd', {}, 'f'), ' filter: ',
    filter('state', fState, STATES), ' ', filter('class', fClass, (tax.classes || []).map((c) => c.name)));
  const head = h('h1', {}, 'Issues ', h('span', { class: 'count' }, `${issues.length}`));
  if (issues.length === 0) {
    return {
      name: 'issues',
      title: 'Issues',
      node: h('section', {}, head, filters, h('div', { class: 'empty' }, h('p', {},
        fState || fClass
          ? 'No issue matches this filter.'
          : 'No issues yet. An issue is created with the first failure of its fingerprint.'))),
    };
  }
  const rows = issues.map((i, n) => h('tr', {
    tabindex: '-1',
    'data-issue': i.id,
    onclick: () => { state.issueSel = n; openIssue(); },
  },
  h('td', { class: 'num' }, i.id),
  h('td', {}, h('span', { class: `state ${i.state}` }, i.state)),
  h('td', {}, h('span', { class: 'class' }, i.class)),
  h('td', {}, i.source),
  h('td', { class: 'num' }, i.occurrences),
  h('td', {}, i.agent || '—', h('div', { class: 'sub' }, i.service || '')),
  STAGES.map((st) => h('td', { class: 'num' }, human(i.latency?.[`${st}_s`]))),
  h('td', { class: 'num', title: localTime(i.last_seen) }, age(i.last_seen))));
  return {
    name: 'issues',
    title: 'Issues',
    node: h('section', {}, head, filters,
      h('table', { class: 'list', id: 'issues' },
        h('caption', { class: 'sr-only' }, 'Issues with their loop latency from first failure to each stage'),
        h('thead', {},
          h('tr', {},
            ['#', 'State', 'Class', 'Source', 'Occ.', 'Agent'].map((t) => h('th', { scope: 'col', rowspan: '2' }, t)),
            h('th', { scope: 'colgroup', colspan: '4', class: 'group' }, 'loop latency from first failure'),
            h('th', { scope: 'col', rowspan: '2' }, 'Last seen')),
          h('tr', {}, STAGES.map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, rows))),
    after: () => select('#issues', state.issueSel),
  };
}

async function openIssue() {
  const i = state.issues[state.issueSel];
  if (!i) return;
  try {
    const d = await api(`/api/v1/issues/${i.id}`);
    const newest = (d.recent_failures || d.failures || [])[0];
    if (!newest) {
      showError(`issue ${i.id} has no stored failure to open`);
      return;
    }
    state.back = location.hash || '#/issues';
    go(`#/failure/${newest.id}`);
  } catch (e) {
    showError(e.message);
  }
}

// ---- charts view ---------------------------------------------------------------------------

async function chartsView(params) {
  const tax = await taxonomy();
  const win = WINDOWS[params.get('window')] ? params.get('window') : '24h';
  const { step, label: winLabel } = WINDOWS[win];
  const data = await api(`/api/v1/stats?window=${win}&step=${step}`);
  const buckets = data.buckets || [];
  const names = (tax.classes || []).map((c) => c.name);
  for (const k of Object.keys(data.classes || {})) if (!names.includes(k)) names.push(k);
  const switcher = h('p', { class: 'filters' }, h('kbd', {}, 'w'), ' window: ',
    Object.entries(WINDOWS).map(([w, o]) => h('a', {
      href: `#/charts?window=${w}`,
      class: 'tab',
      'aria-current': w === win ? 'true' : null,
    }, o.label)).flatMap((a, i) => (i ? [' · ', a] : [a])));
  const fmtBucket = (t) => {
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return String(t);
    return step === '1d'
      ? d.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric' })
      : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  };
  const labels = buckets.map(fmtBucket);
  const total = names.reduce((n, c) => n + sum(data.classes?.[c]?.failures || []), 0);
  const cards = names.map((c) => {
    const d = data.classes?.[c] || { failures: [], latency_s: {} };
    const failures = buckets.map((_, i) => d.failures?.[i] ?? 0);
    const stages = Object.keys(d.latency_s || {});
    stages.sort((a, b) => STAGES.indexOf(a) - STAGES.indexOf(b));
    const series = stages.map((st) => ({ name: st, values: buckets.map((_, i) => d.latency_s[st]?.[i] ?? null) }));
    const n = sum(failures);
    return h('section', { class: 'panel chart-card', 'aria-labelledby': `chart-${c}` },
      h('h2', { id: `chart-${c}` }, h('span', { class: 'class' }, c), ` ${plural(n, 'failure')}`),
      barChart(`${c}: failures per ${step === '1d' ? 'day' : 'hour'}`, labels, failures),
      lineChart(`${c}: mean loop latency per stage`, labels, series));
  });
  return {
    name: 'charts',
    title: 'Charts',
    node: h('section', {},
      h('h1', {}, 'Failures and loop latency'),
      switcher,
      h('p', { class: 'muted' }, `${plural(total, 'failure')} in the last ${winLabel.split(' by ')[0]}`,
        data.from ? ` (${localTime(data.from)} – ${localTime(data.to)})` : '', '. ',
        'Latency is measured from an issue\'s first failure to each stage it reached, averaged over the issues that reached it in each bucket.'),
      total === 0 ? h('p', { class: 'empty' }, 'No failures in this window: the charts are flat.') : null,
      h('div', { class: 'charts' }, cards)),
  };
}

function sum(xs) {
  return xs.reduce((a, b) => a + (typeof b === 'number' ? b : 0), 0);
}

const CHART = { w: 520, h: 150, l: 58, r: 10, t: 12, b: 24 };
let chartIds = 0;

/** A round upper bound for a count axis whose half is a whole number too (above 1). */
function niceCount(x) {
  if (!(x > 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  return [1, 2, 4, 6, 8, 10].find((k) => k * p >= x) * p;
}

/** Round upper bounds for a time axis, in seconds. */
const TIME_STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800,
  21600, 43200, 86400, 172800, 345600, 604800, 1209600, 2592000];

function niceTime(x) {
  if (!(x > 0)) return 1;
  if (x < 0.1) return 0.1;
  return TIME_STEPS.find((k) => k >= x) || Math.ceil(x / 2592000) * 2592000;
}

/** The frame of a chart: title and description for assistive technology, axes and x labels. */
function chartFrame(title, desc, labels, yMax, fmtY) {
  const id = `c${++chartIds}`;
  const { w, h: ht, l, r, t, b } = CHART;
  const svg = s('svg', {
    viewBox: `0 0 ${w} ${ht}`, role: 'img', 'aria-labelledby': `${id}-t ${id}-d`, class: 'chart',
  }, s('title', { id: `${id}-t` }, title), s('desc', { id: `${id}-d` }, desc));
  const y0 = ht - b;
  svg.append(
    s('line', { x1: l, x2: w - r, y1: y0, y2: y0, class: 'axis' }),
    s('line', { x1: l, x2: w - r, y1: t, y2: t, class: 'grid' }),
    s('line', { x1: l, x2: w - r, y1: (t + y0) / 2, y2: (t + y0) / 2, class: 'grid' }),
    s('text', { x: l - 6, y: t + 4, class: 'ylab' }, fmtY(yMax)),
    s('text', { x: l - 6, y: (t + y0) / 2 + 4, class: 'ylab' }, fmtY(yMax / 2) ?? ''),
    s('text', { x: l - 6, y: y0 + 4, class: 'ylab' }, fmtY(0)),
  );
  const n = labels.length;
  const picks = n <= 1 ? [0] : [0, Math.floor((n - 1) / 2), n - 1];
  for (const i of new Set(picks)) {
    if (i >= n) continue;
    const anchor = n > 1 && i === 0 ? 'start' : n > 1 && i === n - 1 ? 'end' : 'middle';
    const x = anchor === 'start' ? l : anchor === 'end' ? w - r : xAt(i, n);
    svg.append(s('text', { x, y: ht - 6, class: `xlab ${anchor}` }, labels[i]));
  }
  return svg;
}

function xAt(i, n) {
  const { w, l, r } = CHART;
  return l + ((w - l - r) * (i + 0.5)) / Math.max(1, n);
}

function yAt(v, max) {
  const { h: ht, t, b } = CHART;
  return ht - b - ((ht - b - t) * v) / max;
}

function barChart(title, labels, values) {
  const max = niceCount(Math.max(0, ...values));
  const peak = Math.max(0, ...values);
  const at = values.indexOf(peak);
  const desc = peak > 0
    ? `${sum(values)} in total; the most, ${peak}, at ${labels[at]}.`
    : 'No failures in this window.';
  const fmt = (v) => (Number.isInteger(v) ? String(v) : null);
  const svg = chartFrame(title, desc, labels, max, fmt);
  const n = values.length;
  const bw = Math.max(1, ((CHART.w - CHART.l - CHART.r) / Math.max(1, n)) * 0.7);
  values.forEach((v, i) => {
    if (!(v > 0)) return;
    const y = yAt(v, max);
    svg.append(s('rect', { x: xAt(i, n) - bw / 2, y, width: bw, height: yAt(0, max) - y, class: 'bar-fill' },
      s('title', {}, `${labels[i]}: ${plural(v, 'failure')}`)));
  });
  return h('figure', {}, svg, h('figcaption', {}, title.split(': ')[1]));
}

function lineChart(title, labels, series) {
  const all = series.flatMap((x) => x.values).filter((v) => typeof v === 'number');
  const max = niceTime(Math.max(0, ...all));
  const desc = all.length === 0
    ? 'No issue reached a stage in this window.'
    : series.map((x) => {
      const vs = x.values.filter((v) => typeof v === 'number');
      return vs.length ? `${x.name}: mean ${human(sum(vs) / vs.length)} over ${plural(vs.length, 'bucket')}` : `${x.name}: none`;
    }).join('; ');
  const tick = (v) => (v === 0 ? '0' : v < 60 ? `${Number(v.toPrecision(2))} s` : human(v));
  const svg = chartFrame(title, desc, labels, max, tick);
  const n = labels.length;
  for (const x of series) {
    let d = '';
    let pen = false;
    x.values.forEach((v, i) => {
      if (typeof v !== 'number') { pen = false; return; }
      d += `${pen ? 'L' : 'M'}${xAt(i, n).toFixed(1)} ${yAt(v, max).toFixed(1)} `;
      pen = true;
    });
    if (d) svg.append(s('path', { d: d.trim(), class: `line s-${x.name}` }));
    x.values.forEach((v, i) => {
      if (typeof v !== 'number') return;
      svg.append(s('circle', { cx: xAt(i, n), cy: yAt(v, max), r: 2.5, class: `dot s-${x.name}` },
        s('title', {}, `${labels[i]}: ${x.name} after ${human(v)}`)));
    });
  }
  const legend = h('ul', { class: 'legend' }, series.map((x) => h('li', {},
    h('span', { class: `swatch s-${x.name}`, 'aria-hidden': 'true' }), x.name)));
  return h('figure', {}, svg, h('figcaption', {}, title.split(': ')[1], legend));
}

// ---- keys ----------------------------------------------------------------------------------

function moveSel(delta) {
  if (state.view === 'queue' && state.queue.length) {
    state.queueSel = Math.max(0, Math.min(state.queue.length - 1, state.queueSel + delta));
    select('#queue', state.queueSel);
  } else if (state.view === 'issues' && state.issues.length) {
    state.issueSel = Math.max(0, Math.min(state.issues.length - 1, state.issueSel + delta));
    select('#issues', state.issueSel);
  }
}

function toggleHelp() {
  const help = $('#help');
  if (help.open) help.close();
  else help.showModal();
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
  const t = e.target;
  const typing = t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
  if (typing) {
    if (e.key === 'Escape' || (e.key === 'Enter' && t.id === 'note')) {
      e.preventDefault();
      t.blur();
      $('#main').focus({ preventScroll: true });
    }
    return;
  }
  if ($('#help').open) {
    if (e.key === '?') { e.preventDefault(); toggleHelp(); }
    return;
  }
  // Enter and Space on a focused button or link do what the button or link does.
  const control = t instanceof HTMLButtonElement || t instanceof HTMLAnchorElement;
  if (control && (e.key === 'Enter' || e.key === ' ')) return;
  const done = handle(e.key);
  if (done) e.preventDefault();
}

/** Runs the command of `key` in the current view; false when the key means nothing here. */
function handle(key) {
  switch (key) {
    case '?': toggleHelp(); return true;
    case 'q': go('#/queue'); return true;
    case 'i': go('#/issues'); return true;
    case 'c': go('#/charts'); return true;
    case 'r': route(); return true;
    default: break;
  }
  if (state.view === 'queue' || state.view === 'issues') {
    if (key === 'j' || key === 'ArrowDown') { moveSel(1); return true; }
    if (key === 'k' || key === 'ArrowUp') { moveSel(-1); return true; }
    if (key === 'Enter') {
      if (state.view === 'queue') openQueued();
      else openIssue();
      return true;
    }
    if (key === 'f' && state.view === 'issues') { $('#filter-state')?.focus(); return true; }
  }
  if (state.view === 'charts' && key === 'w') {
    const { params } = parseHash();
    go(`#/charts?window=${params.get('window') === '7d' ? '24h' : '7d'}`);
    return true;
  }
  if (state.view === 'failure') {
    if (key === 'Escape') { go(state.back); return true; }
    if (key === 'n') { $('#note')?.focus(); return true; }
    if (key === 't') {
      const url = safeUrl(state.failure?.trace_url);
      if (url) window.open(url, '_blank', 'noopener,noreferrer');
      else showError('this failure has no trace link');
      return true;
    }
    if (/^[1-9]$/.test(key)) {
      const c = (state.taxonomy?.classes || [])[Number(key) - 1];
      if (c) label(c.name);
      return true;
    }
  }
  return false;
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener('keydown', onKey);
window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (e) => showError(e.reason?.message || String(e.reason)));
window.addEventListener('error', (e) => showError(e.message));
document.addEventListener('securitypolicyviolation', (e) => {
  showError(`blocked by the Content-Security-Policy: ${e.violatedDirective} ${e.blockedURI || ''}`);
});
$('#help-button').addEventListener('click', toggleHelp);
$('#help-close').addEventListener('click', () => $('#help').close());
$('#forget-token').addEventListener('click', () => {
  storeToken('');
  state.taxonomy = null;
  route();
});
$('#forget-token').hidden = !storedToken();
route();
