// Portico dashboard. Plain JS, no build step, no library.
//
// One source of truth: the registry's watch stream (/v1/watch?format=sse),
// read with fetch() rather than EventSource because EventSource cannot send
// an Authorization header and the token must never travel in a URL. The
// stream starts with a snapshot (every instance, route and gateway), then
// carries each change; the page keeps that state in maps and redraws the
// visible tab at most every RENDER_MS. Large registries stay responsive
// because only what is on screen is built: service cards are capped with
// "show more", instance rows exist only for expanded services (also
// capped), and filters are debounced.
'use strict';

(() => {
  const TOKEN_KEY = 'portico-token';
  const SERVICE_STEP = 200; // service cards per "show more"
  const ROW_STEP = 100; // instance rows per "show more"
  const EVENT_CAP = 500; // events kept in the feed
  const RENDER_MS = 100; // redraws are coalesced to at most one per this
  const FILTER_MS = 150; // filter typing debounce
  // The registry sends a progress line every 5 s on an idle stream, so this
  // much silence means a dead connection (a half-open socket after a
  // registry host vanished): abort and reconnect.
  const STALL_MS = 15000;
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 5000;
  const STATUSES = ['passing', 'warning', 'critical', 'draining'];

  const state = {
    services: new Map(), // service name -> Map(instance id -> instance)
    routes: new Map(), // route name -> route spec
    gateways: new Map(), // gateway id -> record
    certificates: new Map(), // name -> summary (never a key: see docs/ui.md)
    endpoints: new Map(), // gateway id -> { at, body } or { at, error }: asked for, not live
    gatewayRoutes: new Map(), // gateway id -> { at, revision, body } or { at, revision, error }
    askingRoutes: new Set(), // gateway ids whose /v1/gateway-routes is under way
    reach: new Map(), // route name -> { ok, text }: the last shadowing check
    revision: 0, // newest registry revision heard of
    routingRevision: 0, // newest revision of a change other than a gateway record
    lastEventId: null, // where the stream resumes (SSE id)
    connected: false,
    events: [], // newest first
    expanded: new Set(),
    rows: new Map(), // service -> instance rows shown
    serviceLimit: SERVICE_STEP,
    tab: 'services',
  };

  const $ = (id) => document.getElementById(id);

  /** Builds an element; text goes in as text, never as HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('data-')) node.setAttribute(k, v);
      else if (k === 'onclick') node.addEventListener('click', v);
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function ago(ms) {
    if (!ms) return '';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function timeEl(ms) {
    if (!ms) return el('span', { class: 'muted', text: '-' });
    return el('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString(), text: ago(ms) });
  }

  // ---- tokens -------------------------------------------------------------

  class AuthError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const t = token();
    if (t) headers.set('Authorization', `Bearer ${t}`);
    return headers;
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      return body.error || res.statusText;
    } catch {
      return `${res.status} ${res.statusText}`;
    }
  }

  /** A read of the registry's API; 401/403 become an AuthError. */
  async function api(path) {
    const res = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
    if (res.status === 401 || res.status === 403) throw new AuthError(res.status, await errorText(res));
    return res;
  }

  function askToken(err) {
    const form = $('token-form');
    const msg = err.status === 401
      ? (token() ? `The registry refused this token (401): ${err.message}. Enter another.`
        : `This registry requires a token (401): ${err.message}.`)
      : `This token may not read the registry (403): ${err.message}. A read token is enough.`;
    $('token-message').textContent = msg;
    form.hidden = false;
    $('token-input').focus();
  }

  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = $('token-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $('token-input').value = '';
    $('token-form').hidden = true;
    startWatch();
  });

  // ---- the watch stream ---------------------------------------------------

  function setConn(kind, text) {
    const c = $('conn');
    c.className = `conn ${kind}`;
    c.textContent = text;
    state.connected = kind === 'live';
  }

  function banner(text) {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  let generation = 0; // bumps when the watch is restarted (new token)

  function startWatch() {
    generation += 1;
    if (current) current.abort();
    watchLoop(generation);
  }

  let current = null; // AbortController of the open stream

  async function watchLoop(gen) {
    let delay = RETRY_MIN_MS;
    while (gen === generation) {
      const ctl = new AbortController();
      current = ctl;
      try {
        await followOnce(ctl, () => {
          delay = RETRY_MIN_MS;
        });
      } catch (err) {
        if (gen !== generation) return;
        if (err instanceof AuthError) {
          setConn('down', 'needs a token');
          banner('');
          askToken(err);
          return;
        }
      }
      if (gen !== generation) return;
      setConn('down', 'disconnected');
      banner(`Disconnected from the registry, retrying every ${Math.round(delay / 100) / 10}s…`);
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }

  /** Reads one watch response to its end. */
  async function followOnce(ctl, onOpen) {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (state.lastEventId !== null) headers.set('Last-Event-ID', state.lastEventId);
    const res = await fetch('/v1/watch?format=sse', { headers, signal: ctl.signal, cache: 'no-store' });
    if (res.status === 401 || res.status === 403) throw new AuthError(res.status, await errorText(res));
    if (!res.ok) {
      // A resume point the registry refuses: start over from a snapshot.
      if (res.status === 400) state.lastEventId = null;
      throw new Error(`watch answered ${res.status}: ${await errorText(res)}`);
    }
    onOpen();
    setConn('live', 'live');
    banner('');
    $('token-form').hidden = true;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let stall = setTimeout(() => ctl.abort(), STALL_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(stall);
        stall = setTimeout(() => ctl.abort(), STALL_MS);
        // Search for the block end only in what is new (a snapshot of
        // 10,000 instances arrives in many chunks).
        let from = Math.max(0, buf.length - 1);
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n', from)) >= 0) {
          onBlock(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          from = 0;
        }
      }
    } finally {
      clearTimeout(stall);
      reader.cancel().catch(() => {});
    }
  }

  /** One SSE event: `id:`, `event:` and `data:` lines. */
  function onBlock(block) {
    let id = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('id:')) id = line.slice(3).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (!data.length) return;
    apply(JSON.parse(data.join('\n')));
    if (id !== null) state.lastEventId = id;
    scheduleRender();
  }

  // ---- state --------------------------------------------------------------

  function logEvent(kind, text, status) {
    state.events.unshift({ at: Date.now(), kind, text, status });
    if (state.events.length > EVENT_CAP) state.events.length = EVENT_CAP;
  }

  function reason(i) {
    if (i.status === 'critical') {
      if (i.check_failing) return 'check failing';
      return i.ttl ? 'lease lapsed' : 'critical';
    }
    return i.status === 'draining' ? 'draining' : '';
  }

  function putInstance(i) {
    let svc = state.services.get(i.service);
    if (!svc) state.services.set(i.service, (svc = new Map()));
    const prev = svc.get(i.id);
    svc.set(i.id, i);
    return prev;
  }

  function apply(ev) {
    if (ev.revision > state.revision) state.revision = ev.revision;
    switch (ev.type) {
      case 'snapshot': return applySnapshot(ev);
      case 'put': return applyPut(ev);
      case 'delete': return applyDelete(ev);
      case 'route_put': {
        const had = state.routes.has(ev.route.name);
        state.routes.set(ev.route.name, ev.route);
        state.reach.delete(ev.route.name); // checked against the old match
        state.routingRevision = Math.max(state.routingRevision, ev.revision);
        return logEvent('route', `route ${ev.route.name} ${had ? 'changed' : 'created'}`);
      }
      case 'route_delete':
        state.routes.delete(ev.name);
        state.reach.delete(ev.name);
        state.routingRevision = Math.max(state.routingRevision, ev.revision);
        return logEvent('route', `route ${ev.name} deleted`);
      case 'gateway_put': {
        const had = state.gateways.has(ev.gateway.id);
        state.gateways.set(ev.gateway.id, ev.gateway);
        if (!had) logEvent('gateway', `gateway ${ev.gateway.id} joined`);
        return undefined;
      }
      case 'gateway_delete':
        state.gateways.delete(ev.id);
        return logEvent('gateway', `gateway ${ev.id} left (deleted or lease lapsed)`);
      case 'certificate_put': {
        const c = ev.certificate;
        const had = state.certificates.has(c.name);
        state.certificates.set(c.name, summary(c));
        state.routingRevision = Math.max(state.routingRevision, ev.revision);
        return logEvent('certificate', `certificate ${c.name} ${had ? 'replaced' : 'added'} (expires ${c.not_after})`);
      }
      case 'certificate_delete':
        state.certificates.delete(ev.name);
        state.routingRevision = Math.max(state.routingRevision, ev.revision);
        return logEvent('certificate', `certificate ${ev.name} deleted`);
      case 'consumer_put': case 'consumer_delete':
        state.routingRevision = Math.max(state.routingRevision, ev.revision);
        return undefined;
      default:
        return undefined; // progress, and kinds added later
    }
  }

  function applySnapshot(ev) {
    state.services.clear();
    state.routes.clear();
    state.gateways.clear();
    state.certificates.clear();
    let routing = 0;
    for (const i of ev.instances || []) {
      putInstance(i);
      routing = Math.max(routing, i.revision || 0);
    }
    for (const r of ev.routes || []) state.routes.set(r.name, r);
    for (const g of ev.gateways || []) state.gateways.set(g.id, g);
    for (const c of ev.certificates || []) state.certificates.set(c.name, summary(c));
    state.routingRevision = routing;
    const n = (ev.instances || []).length;
    logEvent('snapshot', `snapshot at revision ${ev.revision}: ${n} instances, ${state.routes.size} routes, ${state.gateways.size} gateways`);
  }

  /** A certificate without its PEM chain and key, should the token be
   * allowed them: the page shows and keeps only the summary. */
  function summary(c) {
    const { cert_pem: _chain, key_pem: _key, ...rest } = c;
    return rest;
  }

  function applyPut(ev) {
    const i = ev.instance;
    const prev = putInstance(i);
    state.routingRevision = Math.max(state.routingRevision, ev.revision);
    const who = `${i.service}/${i.id}`;
    if (!prev) {
      logEvent('register', `${who} registered at ${i.address}:${i.port}`, i.status);
    } else if (prev.status !== i.status) {
      const why = reason(i);
      logEvent('status', `${who} ${prev.status} → ${i.status}${why && why !== i.status ? ` (${why})` : ''}`, i.status);
    } else if (prev.revision !== i.revision) {
      logEvent('update', `${who} updated`, i.status);
    }
  }

  function applyDelete(ev) {
    const svc = state.services.get(ev.service);
    const prev = svc && svc.get(ev.id);
    if (svc) {
      svc.delete(ev.id);
      if (!svc.size) state.services.delete(ev.service);
    }
    state.routingRevision = Math.max(state.routingRevision, ev.revision);
    if (!prev) return;
    const how = prev.status === 'critical' && !prev.check_failing && prev.ttl
      ? 'expired (lease lapsed)' : 'removed';
    logEvent('delete', `${ev.service}/${ev.id} ${how}`, 'critical');
  }

  // ---- rendering ----------------------------------------------------------

  // A redraw between a button's press and release would replace the button
  // and lose the click, so redraws wait while a pointer is down.
  let pointerDown = false;
  document.addEventListener('pointerdown', () => { pointerDown = true; }, true);
  document.addEventListener('pointerup', () => { pointerDown = false; }, true);
  document.addEventListener('pointercancel', () => { pointerDown = false; }, true);

  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(function tick() {
      if (pointerDown) {
        setTimeout(tick, RENDER_MS);
        return;
      }
      renderPending = false;
      render();
    }, RENDER_MS);
  }

  function render() {
    $('revision').textContent = state.revision ? `revision ${state.revision}` : '';
    const views = { services: renderServices, routes: renderRoutes, gateways: renderGateways, events: renderEvents, explain: renderExplainGateways, certificates: renderCertificates };
    views[state.tab]();
  }

  function filters() {
    return {
      name: $('filter-name').value.trim().toLowerCase(),
      tag: $('filter-tag').value.trim().toLowerCase(),
      status: $('filter-status').value,
    };
  }

  function instanceMatches(i, f) {
    if (f.status && i.status !== f.status) return false;
    if (f.tag && !(i.tags || []).some((t) => t.toLowerCase().includes(f.tag))) return false;
    return true;
  }

  function renderServices() {
    const f = filters();
    const names = [...state.services.keys()].sort();
    const frag = document.createDocumentFragment();
    let shown = 0;
    let matched = 0;
    let instances = 0;
    for (const name of names) {
      if (f.name && !name.includes(f.name)) continue;
      const insts = state.services.get(name);
      const counts = { passing: 0, warning: 0, critical: 0, draining: 0 };
      let matching = 0;
      for (const i of insts.values()) {
        counts[i.status] = (counts[i.status] || 0) + 1;
        if (instanceMatches(i, f)) matching += 1;
      }
      if ((f.tag || f.status) && !matching) continue;
      matched += 1;
      instances += matching;
      if (shown >= state.serviceLimit) continue;
      shown += 1;
      frag.append(serviceCard(name, insts, counts, matching, f));
    }
    if (matched > shown) {
      frag.append(el('button', {
        type: 'button', class: 'more', text: `show ${Math.min(SERVICE_STEP, matched - shown)} more services (${matched - shown} hidden)`,
        onclick: () => { state.serviceLimit += SERVICE_STEP; render(); },
      }));
    }
    if (!names.length) frag.append(el('p', { class: 'muted', text: state.connected ? 'No instances registered.' : 'Waiting for the registry…' }));
    $('services-list').replaceChildren(frag);
    $('services-summary').textContent = `${matched} services, ${instances} instances shown`;
  }

  function serviceCard(name, insts, counts, matching, f) {
    const open = state.expanded.has(name);
    const head = el('button', {
      type: 'button', class: 'head', 'aria-expanded': String(open), 'data-service': name,
      onclick: () => {
        if (state.expanded.has(name)) state.expanded.delete(name);
        else state.expanded.add(name);
        render();
        pollLeases();
      },
    },
    el('span', { class: 'name', text: `${open ? '▾' : '▸'} ${name}` }),
    el('span', { class: 'count', text: `${insts.size} instance${insts.size === 1 ? '' : 's'}` }),
    ...STATUSES.filter((s) => counts[s]).map((s) => el('span', { class: `count ${s}`, 'data-status': s, text: `${counts[s]} ${s}` })),
    (f.tag || f.status) ? el('span', { class: 'count muted', text: `${matching} match` }) : null);
    const card = el('div', { class: 'service', 'data-service': name }, head);
    if (open) card.append(instanceTable(name, insts, f));
    return card;
  }

  function instanceTable(name, insts, f) {
    const limit = state.rows.get(name) || ROW_STEP;
    const all = [...insts.values()].filter((i) => instanceMatches(i, f));
    all.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const body = el('tbody');
    for (const i of all.slice(0, limit)) body.append(instanceRow(i));
    const wrap = el('div', { class: 'table-wrap' }, el('table', { class: 'instances' },
      el('thead', null, el('tr', null, ...['id', 'address', 'zone', 'weight', 'tags', 'metadata', 'status', 'lease', 'changed'].map((h) => el('th', { text: h })))),
      body));
    if (all.length > limit) {
      wrap.append(el('button', {
        type: 'button', class: 'more', text: `show ${Math.min(ROW_STEP, all.length - limit)} more (${all.length - limit} hidden)`,
        onclick: () => { state.rows.set(name, limit + ROW_STEP); render(); },
      }));
    }
    return wrap;
  }

  function lease(i) {
    if (!i.ttl) return i.check ? 'none: kept by its check' : '-';
    if (i.status === 'critical' && !i.check_failing) return `ttl ${i.ttl}, lapsed ${ago(i.status_since_ms)}`;
    const left = leaseLeft.get(`${i.service}/${i.id}`);
    if (left) {
      const s = Math.max(0, Math.round((left.ms - (Date.now() - left.at)) / 1000));
      return `ttl ${i.ttl}, ${s}s left`;
    }
    return `ttl ${i.ttl}`;
  }

  // Time left on each lease ("service/id" -> {ms, at}), read every 2 s from
  // the instance list of each expanded service: no event says it (a
  // heartbeat changes nothing in the registry's history).
  const leaseLeft = new Map();
  const LEASE_POLL_MS = 2000;
  const LEASE_POLL_SERVICES = 20;
  async function pollLeases() {
    if (!state.connected || state.tab !== 'services') return;
    for (const name of [...state.expanded].slice(0, LEASE_POLL_SERVICES)) {
      try {
        const res = await api(`/v1/services/${encodeURIComponent(name)}/instances`);
        if (!res.ok) continue;
        const list = await res.json();
        const at = Date.now();
        for (const key of [...leaseLeft.keys()]) if (key.startsWith(`${name}/`)) leaseLeft.delete(key);
        for (const [id, ms] of Object.entries(list.lease_left_ms || {})) leaseLeft.set(`${name}/${id}`, { ms, at });
      } catch {
        // The stream's banner already says when the registry is away.
      }
    }
    scheduleRender();
  }
  setInterval(pollLeases, LEASE_POLL_MS);

  function instanceRow(i) {
    const why = reason(i);
    const meta = Object.entries(i.meta || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    return el('tr', { 'data-instance': i.id, 'data-status': i.status },
      el('td', { class: 'mono', text: i.id }),
      el('td', { class: 'mono', text: `${i.scheme || 'http'}://${i.address.includes(':') ? `[${i.address}]` : i.address}:${i.port}` }),
      el('td', { text: i.zone || '' }),
      el('td', { text: i.weight }),
      el('td', null, ...(i.tags || []).map((t) => el('span', { class: 'tag', text: t }))),
      el('td', { class: 'mono', text: meta }),
      el('td', null, el('span', { class: `status ${i.status}`, text: i.status }), why && why !== i.status ? el('div', { class: 'muted reason', text: why }) : null),
      el('td', { text: lease(i) }),
      el('td', null, timeEl(i.status_since_ms)));
  }

  function kv(pairs) {
    const dl = el('dl', { class: 'kv' });
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === '' || (Array.isArray(v) && !v.length)) continue;
      dl.append(el('dt', { text: k }), el('dd', null, v instanceof Node ? v : String(v)));
    }
    return dl;
  }

  function valueMatch(m) {
    if (m.exact !== undefined) return `${m.name} = ${m.exact}`;
    if (m.regex !== undefined) return `${m.name} ~ /${m.regex}/`;
    if (m.present === false) return `${m.name} absent`;
    return `${m.name} present`;
  }

  const MATCH_KEYS = ['name', 'hosts', 'path', 'path_prefix', 'path_regex', 'methods', 'headers', 'query', 'priority', 'service', 'upstreams', 'targets', 'mirror', 'filters'];

  function target(r) {
    if (r.service) return `service ${r.service}`;
    if (r.upstreams) return `upstreams ${r.upstreams.join(', ')}`;
    if (r.targets) {
      return r.targets.map((t) => `${t.service}${t.subset ? ` ${JSON.stringify(t.subset)}` : ''} weight ${t.weight ?? 1}`).join('; ');
    }
    return '-';
  }

  /** What each gateway reported for route `name` with its last renewal. */
  function routeTraffic(name) {
    const parts = [];
    for (const [id, g] of state.gateways) {
      const l = (g.routes || {})[name];
      if (l) parts.push(`${id}: ${l.rps.toFixed(1)} req/s, ${(l.error_rate * 100).toFixed(1)}% 5xx, p99 ${l.p99_ms.toFixed(1)} ms`);
    }
    return parts.join('\n');
  }

  function reachView(name) {
    const r = state.reach.get(name);
    if (!r) return '';
    return el('span', { class: r.ok === true ? 'status passing' : r.ok === false ? 'status critical' : 'muted', text: r.text });
  }

  /** A request the route matches, for `/explain`; null when its match has a
   * regex (no sample request can be made from it honestly). */
  function sampleRequest(r) {
    const ms = [...(r.headers || []), ...(r.query || [])];
    if (r.path_regex !== undefined || ms.some((m) => m.regex !== undefined)) return null;
    const q = new URLSearchParams();
    q.set('method', (r.methods || ['GET'])[0]);
    if (r.hosts && r.hosts.length) q.set('host', r.hosts[0].replace('*', 'sample'));
    const query = (r.query || []).filter((m) => m.present !== false)
      .map((m) => `${encodeURIComponent(m.name)}=${encodeURIComponent(m.exact ?? 'sample')}`);
    const path = r.path ?? r.path_prefix ?? '/';
    q.set('path', query.length ? `${path}?${query.join('&')}` : path);
    for (const m of r.headers || []) {
      if (m.present !== false) q.append('header', `${m.name}:${m.exact ?? 'sample'}`);
    }
    return q;
  }

  /** Asks a gateway's `/explain` where a request each route matches goes: a
   * route that does not get its own sample request is shadowed by the one
   * that does, and the gateway says why. */
  async function checkReach(gateway) {
    for (const [name, r] of state.routes) {
      const q = sampleRequest(r);
      if (!q) {
        state.reach.set(name, { ok: null, text: 'not checked: its match has a regex' });
        continue;
      }
      q.set('gateway', gateway);
      try {
        const res = await api(`/v1/explain?${q}`);
        const x = await res.json();
        if (!res.ok) {
          state.reach.set(name, { ok: null, text: `not checked: ${res.status} ${x.error || ''}` });
        } else if (x.route && x.route.name === name) {
          state.reach.set(name, { ok: true, text: `reachable (on ${gateway})` });
        } else {
          const mine = (x.considered || []).find((c) => c.route === name);
          const winner = x.route ? `route ${x.route.name}` : 'no route';
          state.reach.set(name, { ok: false, text: `shadowed on ${gateway}: a request it matches goes to ${winner}${mine ? ` (${mine.result})` : ''}` });
        }
      } catch (err) {
        if (err instanceof AuthError) askToken(err);
        state.reach.set(name, { ok: null, text: `not checked: ${err.message || err}` });
      }
    }
    render();
  }

  /** One route's card: its match, target, filters, policy and traffic.
   * `badge` marks where it comes from (a gateway's route file). */
  function routeCard(name, r, badge, extra) {
    const path = r.path !== undefined ? `= ${r.path}` : r.path_regex !== undefined ? `~ /${r.path_regex}/` : r.path_prefix !== undefined ? `${r.path_prefix}*` : 'any';
    const policies = Object.entries(r).filter(([k]) => !MATCH_KEYS.includes(k) && k !== 'source').map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
    const filters = (r.filters || []).map((fl, n) => {
      const { type, ...rest } = fl;
      return el('div', { class: 'mono' }, `[${n}] ${type}`, Object.keys(rest).length ? ` ${JSON.stringify(rest)}` : '');
    });
    return el('div', { class: 'card route', 'data-route': name },
      el('h3', null, name, badge ? el('span', { class: 'tag source', text: badge }) : ''),
      kv([
        ['hosts', (r.hosts || []).join(', ') || 'any'],
        ['path', path],
        ['methods', (r.methods || []).join(', ') || 'any'],
        ['headers', (r.headers || []).map(valueMatch).join('; ')],
        ['query', (r.query || []).map(valueMatch).join('; ')],
        ['priority', r.priority ?? 0],
        ['target', target(r)],
        ['mirror', r.mirror ? JSON.stringify(r.mirror) : ''],
        ['filters', filters.length ? el('div', null, ...filters) : ''],
        ['policy', policies.join('\n')],
        ['traffic', routeTraffic(name)],
        ...extra,
      ]));
  }

  function renderRoutes() {
    const frag = document.createDocumentFragment();
    const names = [...state.routes.keys()].sort();
    for (const name of names) {
      frag.append(routeCard(name, state.routes.get(name), null, [['reach', reachView(name)]]));
    }
    const via = [...state.gateways.values()].find((g) => g.admin);
    const check = el('button', {
      type: 'button', id: 'check-reach', class: 'more', disabled: !via || !names.length,
      text: via ? `check each route is reachable (asks ${via.id})` : 'check each route is reachable (needs a gateway with an admin listener)',
      onclick: () => checkReach(via.id),
    });
    frag.prepend(check);
    if (!names.length) frag.append(el('p', { class: 'muted', text: 'No routes in the registry.' }));
    for (const id of [...state.gateways.keys()].sort()) frag.append(gatewayRoutesBox(state.gateways.get(id)));
    $('routes-list').replaceChildren(frag);
  }

  /** What one gateway routes by beyond the registry's routes: its route
   * file's routes (as cards, marked "route file") and its implicit
   * `/{service}` routes, from its admin `/routes` relayed by the registry.
   * Asked again when the gateway applies a newer revision; a route file
   * edit moves no registry revision, so "refresh" asks at once. */
  function gatewayRoutesBox(g) {
    const box = el('div', { class: 'gateway-routes', 'data-gateway': g.id },
      el('h3', { text: `Gateway ${g.id}: its own routes` }));
    if (!g.admin) {
      box.append(el('p', { class: 'muted', text: 'This gateway reports no admin listener: its route file cannot be read.' }));
      return box;
    }
    const got = state.gatewayRoutes.get(g.id);
    if (!got || got.revision < g.applied_revision) fetchGatewayRoutes(g);
    box.append(el('button', { type: 'button', class: 'more', text: 'refresh', onclick: () => fetchGatewayRoutes(g, true) }));
    if (!got) return box;
    box.append(el('span', { class: 'muted', text: ` as of ${new Date(got.at).toLocaleTimeString()}` }));
    if (got.error) {
      box.append(el('p', { class: 'error', text: got.error }));
      return box;
    }
    const routes = got.body.routes || [];
    const bySource = (s) => routes.filter((r) => r.source === s);
    const file = bySource('file');
    for (const r of file) box.append(routeCard(r.name, r, 'route file', []));
    if (!file.length) box.append(el('p', { class: 'muted', text: 'No routes from a route file.' }));
    const implicit = bySource('implicit');
    const applied = bySource('registry').length;
    box.append(el('p', { class: 'muted', text: `${applied} registry route${applied === 1 ? '' : 's'} applied (listed above)` +
      (implicit.length ? `; implicit routes: ${implicit.map((r) => `${r.path_prefix} → ${r.service}`).join(', ')}` : '') }));
    return box;
  }

  async function fetchGatewayRoutes(g, force) {
    if (state.askingRoutes.has(g.id) && !force) return;
    state.askingRoutes.add(g.id);
    const revision = g.applied_revision;
    try {
      const res = await api(`/v1/gateway-routes?${new URLSearchParams({ gateway: g.id })}`);
      const body = await res.json();
      state.gatewayRoutes.set(g.id, res.ok ? { at: Date.now(), revision, body } : { at: Date.now(), revision, error: `${res.status}: ${body.error || 'failed'}` });
    } catch (err) {
      if (err instanceof AuthError) askToken(err);
      state.gatewayRoutes.set(g.id, { at: Date.now(), revision, error: String(err.message || err) });
    } finally {
      state.askingRoutes.delete(g.id);
    }
    scheduleRender();
  }

  function renderGateways() {
    const frag = document.createDocumentFragment();
    for (const id of [...state.gateways.keys()].sort()) {
      const g = state.gateways.get(id);
      const behind = Math.max(0, state.routingRevision - g.applied_revision);
      const lag = behind ? `${behind} revisions behind the last routing change (${state.routingRevision})` : 'up to date';
      frag.append(el('div', { class: 'card gateway', 'data-gateway': id },
        el('h3', { text: id }),
        kv([
          ['addresses', g.addresses.join(', ')],
          ['admin', g.admin || 'not reported'],
          ['version', g.version],
          ['applied revision', `${g.applied_revision} (registry at ${state.revision}): ${lag}`],
          ['started', timeEl(g.started_at_ms)],
          ['last renewal', timeEl(g.renewed_at_ms)],
          ['lease', g.ttl],
        ]),
        routeLoads(g),
        endpointsBox(g)));
    }
    if (!state.gateways.size) frag.append(el('p', { class: 'muted', text: 'No live gateway has registered.' }));
    $('gateways-list').replaceChildren(frag);
  }

  /** Per route traffic a gateway reported with its last renewal. */
  function routeLoads(g) {
    const loads = Object.entries(g.routes || {});
    if (!loads.length) return el('p', { class: 'muted', text: 'No requests in its last renewal period.' });
    loads.sort((a, b) => b[1].rps - a[1].rps);
    const fmt = (n, digits) => (Number.isFinite(n) ? n.toFixed(digits) : '-');
    return el('div', { class: 'table-wrap' }, el('table', { class: 'loads' },
      el('thead', null, el('tr', null, ...['route', 'requests/s', '5xx', 'p99'].map((h) => el('th', { text: h })))),
      el('tbody', null, ...loads.map(([name, l]) => el('tr', { 'data-route': name },
        el('td', { class: 'mono', text: name }),
        el('td', { text: fmt(l.rps, 1) }),
        el('td', { class: l.error_rate > 0 ? 'status critical' : '', text: `${fmt(l.error_rate * 100, 1)}%` }),
        el('td', { text: `${fmt(l.p99_ms, 1)} ms` }))))));
  }

  const DAY_MS = 86400000;
  const EXPIRY_WARNING_DAYS = 14;

  function renderCertificates() {
    const frag = document.createDocumentFragment();
    const rows = [...state.certificates.values()].sort((a, b) => a.not_after_unix - b.not_after_unix);
    if (rows.length) {
      frag.append(el('div', { class: 'table-wrap' }, el('table', { class: 'certificates' },
        el('thead', null, el('tr', null, ...['name', 'serves', 'expires', 'left', 'SHA-256'].map((h) => el('th', { text: h })))),
        el('tbody', null, ...rows.map((c) => {
          const days = Math.floor((c.not_after_unix * 1000 - Date.now()) / DAY_MS);
          const level = days < 0 ? 'critical' : days < EXPIRY_WARNING_DAYS ? 'warning' : 'passing';
          return el('tr', { 'data-certificate': c.name },
            el('td', { class: 'mono', text: c.name }),
            el('td', null, ...(c.names || []).map((n) => el('span', { class: 'tag', text: n }))),
            el('td', { text: c.not_after }),
            el('td', { class: `status ${level}`, text: days < 0 ? 'expired' : `${days} days${level === 'warning' ? ': renew soon' : ''}` }),
            el('td', { class: 'mono', title: c.fingerprint_sha256, text: `${(c.fingerprint_sha256 || '').slice(0, 16)}…` }));
        })))));
    } else {
      frag.append(el('p', { class: 'muted', text: 'No certificates in the registry (gateways may still serve their --tls-cert files).' }));
    }
    $('certificates-list').replaceChildren(frag);
  }

  /** The gateway's `/endpoints`, relayed by the registry, when asked for. */
  function endpointsBox(g) {
    const box = el('div', { class: 'endpoints' });
    const got = state.endpoints.get(g.id);
    box.append(el('button', {
      type: 'button', class: 'more', disabled: !g.admin,
      title: g.admin ? '' : 'this gateway reports no admin listener',
      text: got ? 'refresh endpoints' : 'show endpoints',
      onclick: () => fetchEndpoints(g.id),
    }));
    if (!got) return box;
    box.append(el('span', { class: 'muted', text: ` as of ${new Date(got.at).toLocaleTimeString()}` }));
    if (got.error) {
      box.append(el('p', { class: 'error', text: got.error }));
      return box;
    }
    for (const r of got.body.routes || []) {
      box.append(el('h4', { text: `${r.name} (${r.lb}, ${r.requests_in_flight} in flight)` }));
      if (!(r.endpoints || []).length) {
        box.append(el('p', { class: 'muted', text: 'no endpoints (no routable instance)' }));
        continue;
      }
      box.append(
        el('div', { class: 'table-wrap', 'data-route': r.name }, el('table', null,
          el('thead', null, el('tr', null, ...['endpoint', 'in rotation', 'weight', 'zone', 'in flight', 'latency', 'failures'].map((h) => el('th', { text: h })))),
          el('tbody', null, ...(r.endpoints || []).map((p) => el('tr', { 'data-endpoint': p.address },
            el('td', { class: 'mono', text: `${p.address}${p.id ? ` (${p.id})` : ''}` }),
            el('td', { class: p.in_rotation === false ? 'status critical' : '', text: rotation(p) }),
            el('td', { text: p.weight ?? '' }),
            el('td', { text: p.zone ?? '' }),
            el('td', { text: p.in_flight ?? '' }),
            el('td', { text: p.latency_ewma_ms === undefined ? '' : `${p.latency_ewma_ms.toFixed(1)} ms` }),
            el('td', { text: p.consecutive_failures ?? '' })))))));
    }
    return box;
  }

  async function fetchEndpoints(id) {
    const q = new URLSearchParams({ gateway: id });
    try {
      const res = await api(`/v1/endpoints?${q}`);
      const body = await res.json();
      state.endpoints.set(id, res.ok ? { at: Date.now(), body } : { at: Date.now(), error: `${res.status}: ${body.error || 'failed'}` });
    } catch (err) {
      if (err instanceof AuthError) askToken(err);
      state.endpoints.set(id, { at: Date.now(), error: String(err.message || err) });
    }
    render();
  }

  function renderEvents() {
    const frag = document.createDocumentFragment();
    for (const e of state.events) {
      frag.append(el('li', { 'data-kind': e.kind },
        el('time', { datetime: new Date(e.at).toISOString(), text: new Date(e.at).toLocaleTimeString() }),
        el('span', { class: e.status ? `status ${e.status}` : '', text: e.text })));
    }
    $('events-list').replaceChildren(frag);
  }

  // ---- explain ------------------------------------------------------------

  function renderExplainGateways() {
    const select = $('explain-gateway');
    const chosen = select.value;
    const ids = [...state.gateways.keys()].sort();
    const have = [...select.options].map((o) => o.value).join('\n');
    if (have === ids.join('\n')) return;
    select.replaceChildren(...ids.map((id) => el('option', { value: id, text: id })));
    if (ids.includes(chosen)) select.value = chosen;
  }

  $('explain-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const out = $('explain-result');
    const q = new URLSearchParams();
    q.set('gateway', $('explain-gateway').value);
    q.set('method', $('explain-method').value.trim() || 'GET');
    if ($('explain-host').value.trim()) q.set('host', $('explain-host').value.trim());
    q.set('path', $('explain-path').value.trim() || '/');
    for (const line of $('explain-headers').value.split('\n')) {
      if (line.trim()) q.append('header', line.trim().replace(/\s*:\s*/, ':'));
    }
    out.replaceChildren(el('p', { class: 'muted', text: 'asking…' }));
    try {
      const res = await api(`/v1/explain?${q}`);
      const body = await res.json();
      out.replaceChildren(res.ok ? explainView(body) : el('p', { class: 'error', text: `${res.status}: ${body.error || 'failed'}` }));
    } catch (err) {
      if (err instanceof AuthError) askToken(err);
      out.replaceChildren(el('p', { class: 'error', text: String(err.message || err) }));
    }
  });

  /** Whether an endpoint takes traffic, and if not why, from /explain's fields. */
  function rotation(p) {
    if (p.in_rotation !== false) return 'yes';
    const why = [];
    if (p.ejected_for_ms > 0) why.push(`ejected ${Math.ceil(p.ejected_for_ms / 1000)}s more (${p.ejection_reason || 'failures'})`);
    if (p.breaker && p.breaker !== 'closed') why.push(`breaker ${p.breaker}`);
    if (p.health_check === 'failing') why.push('health check failing');
    return `no${why.length ? `: ${why.join(', ')}` : ''}`;
  }

  function explainView(x) {
    const view = el('div', { class: 'explain-answer' }, el('p', { class: 'verdict', text: x.verdict || '' }));
    if (x.route) {
      view.append(kv([
        ['route', x.route.name],
        ['target', x.route.target ? JSON.stringify(x.route.target) : ''],
        ['balancer', x.route.lb],
        ['table revision', x.table_revision],
      ]));
    }
    if (x.considered && x.considered.length) {
      view.append(el('h4', { text: 'Routes considered' }), el('ul', null, ...x.considered.map((c) => el('li', { text: `${c.route} (${c.at}, priority ${c.priority}): ${c.result}` }))));
    }
    if (x.endpoints && x.endpoints.length) {
      view.append(el('h4', { text: 'Endpoints' }), el('div', { class: 'table-wrap' }, el('table', null,
        el('thead', null, el('tr', null, ...['address', 'in rotation', 'weight', 'zone', 'in flight'].map((h) => el('th', { text: h })))),
        el('tbody', null, ...x.endpoints.map((p) => el('tr', null,
          el('td', { class: 'mono', text: `${p.address}${p.id ? ` (${p.id})` : ''}` }),
          el('td', { text: rotation(p) }),
          el('td', { text: p.weight ?? '' }),
          el('td', { text: p.zone ?? '' }),
          el('td', { text: p.in_flight ?? '' })))))));
    }
    view.append(el('details', null, el('summary', { text: 'full answer' }), el('pre', { text: JSON.stringify(x, null, 2) })));
    return view;
  }

  // ---- wiring -------------------------------------------------------------

  function showTab(tab) {
    state.tab = tab;
    for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.tab === tab);
    for (const s of document.querySelectorAll('section.tab')) s.hidden = s.id !== tab;
    if (location.hash !== `#${tab}`) history.replaceState(null, '', `#${tab}`);
    render();
  }

  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));

  let filterTimer = null;
  for (const id of ['filter-name', 'filter-tag', 'filter-status']) {
    $(id).addEventListener('input', () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => {
        state.serviceLimit = SERVICE_STEP;
        render();
      }, FILTER_MS);
    });
  }

  // Relative times ("12s ago") age without events.
  setInterval(scheduleRender, 5000);

  // Self-preservation is not in the watch stream: ask now and then.
  async function pollPreservation() {
    if (!state.connected) return;
    try {
      const res = await api('/v1/services');
      if (!res.ok) return;
      const sp = (await res.json()).self_preservation;
      const box = $('preservation');
      box.hidden = !(sp && sp.active);
      if (sp && sp.active) {
        box.textContent = `Self-preservation is on: ${sp.lapsed} lapsed and ${sp.late} late leases of ${sp.live}; expiry is paused.`;
      }
    } catch {
      // The stream's banner already says when the registry is away.
    }
  }
  setInterval(pollPreservation, 10000);

  const initial = location.hash.slice(1);
  showTab(['services', 'routes', 'gateways', 'certificates', 'events', 'explain'].includes(initial) ? initial : 'services');
  startWatch();
})();
