// The dashboard page: renders the snapshots the node pushes over server-sent events, draws
// the selected stream's relay tree, and drives the player.

import { bitrate, duration, h, percent, plural } from './dom.js';
import { renderTree, treeSignature } from './relay-tree.js';
import { Player } from './player.js';

const $ = (id) => document.getElementById(id);

// With admin.token set, the operator opens `/#token=<token>`: the fragment never leaves the
// browser, and the page sends it with its requests (EventSource cannot set headers, so the
// event stream carries it as ?access_token=, which the admin listener accepts on GETs only).
const adminToken = decodeURIComponent(/(?:^#|&)token=([^&]*)/.exec(location.hash)?.[1] ?? '');

const state = {
  snapshot: null,
  selected: null,
  protocol: 'flv',
  treeSig: '',
  nodeOptionsSig: '',
  lastAt: 0,
};

const player = new Player({
  video: $('video'),
  placeholder: $('video-placeholder'),
  title: $('player-title'),
  stop: $('player-stop'),
  status: $('ps-status'),
  res: $('ps-res'),
  time: $('ps-time'),
  buffer: $('ps-buffer'),
  dropped: $('ps-dropped'),
});

// ---- live data ------------------------------------------------------------------------

function connect() {
  const events = new EventSource(adminToken ? `/api/v1/dashboard/events?access_token=${encodeURIComponent(adminToken)}` : '/api/v1/dashboard/events');
  // "live" is set by the first snapshot, not by the socket opening.
  events.addEventListener('error', () => {
    setConnection('down', 'reconnecting…');
    void explainRefusal();
  });
  events.addEventListener('snapshot', (e) => {
    try {
      render(JSON.parse(e.data));
    } catch (err) {
      setConnection('down', `bad snapshot: ${err instanceof Error ? err.message : err}`);
    }
  });
}

// EventSource does not say why it failed: ask once with a plain request, and name a missing or wrong token.
async function explainRefusal() {
  try {
    const r = await fetch('/api/v1/dashboard/snapshot', { headers: adminToken ? { Authorization: `Bearer ${adminToken}` } : {} });
    if (r.status === 401) setConnection('down', adminToken ? 'admin token refused' : 'admin token required: open this page as /#token=<admin.token>');
  } catch {
    // The node is down: "reconnecting…" already says so.
  }
}

function setConnection(kind, text) {
  $('conn').dataset.state = kind;
  $('conn-text').textContent = text;
}

// No snapshot for a while: say so, even if the socket looks open.
setInterval(() => {
  if (state.lastAt && Date.now() - state.lastAt > 4000) setConnection('down', 'no updates');
}, 1000);

// ---- rendering ------------------------------------------------------------------------

function render(snap) {
  state.snapshot = snap;
  state.lastAt = Date.now();
  setConnection('live', 'live');
  $('self-id').textContent = snap.self;
  document.title = `meshcast · ${snap.self}`;
  renderCards(snap);
  renderNodes(snap);
  renderStreams(snap);
  renderNodeOptions(snap);
  if (!state.selected && snap.streams.length > 0) state.selected = snap.streams[0].key;
  renderTreePanel(snap);
  $('updated').textContent = `updated ${new Date(snap.at).toLocaleTimeString()}`;
}

function renderCards(snap) {
  const up = snap.nodes.filter((n) => n.state === 'alive' || n.state === 'draining');
  const troubled = snap.nodes.length - up.length;
  $('card-nodes').textContent = String(up.length);
  $('card-nodes-sub').textContent = troubled > 0 ? `${troubled} suspect or gone` : snap.mesh ? 'all healthy' : 'standalone node';

  const live = snap.streams.filter((s) => Object.values(s.nodes).some((n) => n.live));
  const relays = snap.streams.reduce((n, s) => n + s.relays.length, 0);
  $('card-streams').textContent = String(live.length);
  $('card-streams-sub').textContent = plural(relays, 'relay');

  const viewers = snap.streams.reduce((n, s) => n + s.viewers, 0);
  const capacity = up.reduce((n, node) => n + node.capacity, 0);
  $('card-viewers').textContent = String(viewers);
  $('card-viewers-sub').textContent = capacity > 0 ? `capacity ${capacity}` : '';

  const egress = snap.nodes.reduce((n, node) => n + node.egressBps, 0);
  const ingress = snap.nodes.reduce((n, node) => n + node.ingressBps, 0);
  $('card-egress').textContent = bitrate(egress);
  $('card-egress-sub').textContent = `ingress ${bitrate(ingress)}`;

  $('bus-status').textContent = snap.bus ? `bus: ${snap.bus.kind} · ${snap.bus.status}` : 'no mesh bus';
  const self = snap.nodes.find((n) => n.self);
  if (self && self.rtmp) $('publish-hint').textContent = `ffmpeg -re -i input.mp4 -c copy -f flv ${self.rtmp}/live/stream`;
}

function renderNodes(snap) {
  const rows = snap.nodes.map((n) => {
    const load = n.capacity > 0 ? n.viewers / n.capacity : 0;
    const bar = h('div', { class: ['bar', load > 0.85 ? 'hot' : '', n.viewers > 0 ? 'some' : ''].filter(Boolean).join(' ') }, h('span'));
    bar.firstChild.style.setProperty('--pct', `${Math.min(100, load * 100).toFixed(1)}%`);
    const unreachable = snap.unreachable.includes(n.id);
    return h(
      'tr',
      { data: { node: n.id } },
      h('td', {}, h('span', { class: 'node-id', text: n.id }), n.self ? h('span', { class: 'badge', text: 'this node' }) : null, h('span', { class: 'roles', text: n.roles.join(' · ') })),
      h('td', {}, h('span', { class: `pill ${n.state}`, text: n.state, title: unreachable ? 'API not reachable from this node' : null })),
      h('td', {}, h('div', { class: 'load' }, bar, h('span', { class: 'count' }, h('b', { text: String(n.viewers) }), ` / ${n.capacity}`))),
      h('td', { class: 'num', text: bitrate(n.egressBps) }),
      h('td', { class: 'num', text: bitrate(n.ingressBps) }),
      h('td', { class: 'num', text: percent(n.cpu) }),
      h('td', { class: 'num', text: String(n.streamsOwned) }),
      h('td', { class: 'num', text: String(n.relaysHeld) }),
      h('td', { class: 'num muted', text: n.heartbeatAgeMs === null ? '–' : `${(n.heartbeatAgeMs / 1000).toFixed(1)} s ago` }),
    );
  });
  $('nodes-table').tBodies[0].replaceChildren(...rows);
}

function mediaSummary(s) {
  const parts = [];
  if (s.video) {
    const v = s.video;
    parts.push([v.codec, v.width && v.height ? `${v.width}×${v.height}` : null, v.fps ? `${Math.round(v.fps)} fps` : null].filter(Boolean).join(' '));
  }
  if (s.audio) parts.push(s.audio);
  return parts.join(' · ') || '–';
}

const SOURCES = { rtmp: 'published here', relay: 'relayed', pull: 'pulled from outside', none: 'waiting for the stream' };

function chipTitle(id, at) {
  const protocols = Object.entries(at.protocols || {}).map(([p, n]) => `${p} ${n}`);
  return `${id}: ${SOURCES[at.source] || at.source}${protocols.length ? ` · ${protocols.join(', ')}` : ''}`;
}

// Primary and standby encoder, and the failovers between them (each with its reason, in the title).
function encodersCell(s, now) {
  const p = s.publishing;
  if (!p || (!p.primary && !p.standby && p.failovers.length === 0)) return h('td', { text: '–' });
  const seat = (label, x) => (x ? h('div', { class: 'seat', title: `${label} on ${x.node} since ${new Date(x.since).toLocaleTimeString()}` }, `${label} `, h('span', { class: 'node-id', text: x.node }), x.live === false ? ' · silent' : '', ` · ${duration(now - x.since)}`) : null);
  const failovers = p.failovers.length
    ? h('div', { class: 'failovers', title: p.failovers.map((f) => `${new Date(f.at).toLocaleTimeString()} ${f.from || '?'} → ${f.to} (epoch ${f.epoch ?? '?'}): ${f.reason}`).join('\n') }, `${plural(p.failovers.length, 'failover')} · last: ${p.failovers[p.failovers.length - 1].reason}`)
    : null;
  return h('td', { class: 'encoders' }, seat('primary', p.primary), seat('standby', p.standby), failovers);
}

function renderStreams(snap) {
  const playing = player.current;
  const rows = snap.streams.map((s) => {
    const live = Object.values(s.nodes).some((n) => n.live);
    const perNode = Object.entries(s.nodes)
      .sort(([a], [b]) => (a === s.owner ? -1 : b === s.owner ? 1 : a < b ? -1 : 1))
      .map(([id, at]) => h('span', { class: id === s.owner ? 'chip owner' : 'chip', title: chipTitle(id, at) }, `${id} · `, h('b', { text: String(at.viewers) })));
    const playButton = (protocol, label) =>
      h('button', {
        type: 'button',
        class: playing && playing.key === s.key && playing.protocol === protocol ? 'play active' : 'play',
        data: { play: protocol, key: s.key },
        title: `play ${s.key} over ${label}`,
        text: `▶ ${label}`,
      });
    return h(
      'tr',
      { class: s.key === state.selected ? 'selected' : null, data: { key: s.key } },
      h('td', {}, live ? h('span', { class: 'live-dot', title: 'live' }) : null, h('span', { class: 'stream-key' }, h('span', { class: 'app', text: `${s.app}/` }), s.stream)),
      h('td', {}, h('span', { class: 'node-id', text: s.owner ?? '–' })),
      encodersCell(s, snap.at),
      h('td', { text: mediaSummary(s) }),
      h('td', { class: 'num', text: s.startedAt ? duration(snap.at - s.startedAt) : '–' }),
      h('td', { class: 'num', text: String(s.viewers) }),
      h('td', {}, h('div', { class: 'chips' }, ...perNode)),
      h('td', { class: 'actions' }, playButton('flv', 'FLV'), playButton('hls', 'HLS'), playButton('whep', 'WebRTC')),
    );
  });
  $('streams-table').tBodies[0].replaceChildren(...rows);
  $('streams-empty').hidden = snap.streams.length > 0;
}

function renderNodeOptions(snap) {
  const select = $('play-node');
  // Media always comes from a node's public listener (this page is on the admin listener, which serves none).
  const options = snap.nodes.filter((n) => n.http && (n.self || (n.roles.includes('playback') && n.state === 'alive')));
  const sig = JSON.stringify(options.map((n) => [n.id, n.http]));
  if (sig === state.nodeOptionsSig) return;
  state.nodeOptionsSig = sig;
  const keep = select.value;
  select.replaceChildren(...options.map((n) => h('option', { value: n.http, text: n.self ? `${n.id} (this node)` : n.id })));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function renderTreePanel(snap) {
  const box = $('tree');
  const stream = snap.streams.find((s) => s.key === state.selected);
  $('tree-title').textContent = stream ? `${stream.key} · ${plural(stream.relays.length, 'relay')}` : state.selected ? `${state.selected} · ended` : 'no stream selected';
  const sig = stream ? treeSignature(stream, snap.self) : `none:${state.selected}`;
  if (sig === state.treeSig) return;
  state.treeSig = sig;
  const svg = stream ? renderTree(stream, snap.self) : null;
  box.replaceChildren(svg ?? h('div', { class: 'placeholder', text: stream ? 'waiting for the stream\u2019s owner…' : 'Select a stream to see how it flows through the mesh.' }));
}

// ---- interaction ----------------------------------------------------------------------

function select(key) {
  state.selected = key;
  for (const tr of $('streams-table').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.key === key);
  if (state.snapshot) renderTreePanel(state.snapshot);
}

function play(key, protocol) {
  const stream = state.snapshot && state.snapshot.streams.find((s) => s.key === key);
  if (!stream) return;
  select(key);
  setProtocol(protocol);
  const nodeSelect = $('play-node');
  const via = nodeSelect.selectedOptions[0] ? nodeSelect.selectedOptions[0].textContent : 'this node';
  // Every node offered here has a route API: a WebRTC player asks them for another node when its own is lost.
  const routeBases = [...nodeSelect.options].map((o) => o.value);
  void player.play({ app: stream.app, stream: stream.stream, key, protocol, base: nodeSelect.value, via, routeBases }).then(() => {
    if (state.snapshot) renderStreams(state.snapshot);
  });
}

function setProtocol(protocol) {
  state.protocol = protocol;
  for (const b of document.querySelectorAll('.segmented button')) b.classList.toggle('on', b.dataset.protocol === protocol);
}

$('streams-table').tBodies[0].addEventListener('click', (e) => {
  const target = e.target instanceof Element ? e.target : null;
  const button = target && target.closest('button[data-play]');
  if (button) {
    play(button.dataset.key, button.dataset.play);
    return;
  }
  const row = target && target.closest('tr[data-key]');
  if (row) select(row.dataset.key);
});

for (const b of document.querySelectorAll('.segmented button')) {
  b.addEventListener('click', () => {
    setProtocol(b.dataset.protocol);
    const current = player.current;
    if (current && current.protocol !== b.dataset.protocol) play(current.key, b.dataset.protocol);
  });
}

$('play-node').addEventListener('change', () => {
  const current = player.current;
  if (current) play(current.key, current.protocol);
});

$('player-stop').addEventListener('click', () => {
  if (state.snapshot) setTimeout(() => renderStreams(state.snapshot), 0);
});

connect();
