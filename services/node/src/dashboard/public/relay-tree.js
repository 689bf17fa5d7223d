// Draws one stream's relay tree as SVG: the owner at the top, each relay under the node it
// pulls from. Layout is a plain tidy tree: leaves are spaced evenly left to right, parents
// sit centred over their children, one row per hop.

import { s } from './dom.js';

const BOX_W = 150;
const BOX_H = 50;
const GAP_X = 26;
const GAP_Y = 64;
const PAD = 16;

/**
 * Returns the tree of `stream` (a snapshot stream) as nested { id, children, missing } nodes,
 * rooted at the owner. Relays whose parent is not in the tree hang off the root, marked.
 */
export function buildTree(stream) {
  const rootId = stream.owner ?? Object.keys(stream.nodes).find((id) => ['rtmp', 'whip'].includes(stream.nodes[id].source)) ?? null;
  if (!rootId) return null;
  const nodes = new Map([[rootId, { id: rootId, children: [], missing: false, orphan: false }]]);
  for (const r of stream.relays) {
    if (r.node === rootId) continue;
    nodes.set(r.node, { id: r.node, children: [], missing: false, orphan: false });
  }
  for (const r of stream.relays) {
    const child = nodes.get(r.node);
    if (!child || r.node === rootId) continue;
    const parent = nodes.get(r.parent);
    if (parent && !isAncestor(child, parent)) parent.children.push(child);
    else {
      child.orphan = true;
      nodes.get(rootId).children.push(child);
    }
  }
  // Nodes holding the stream with players but no relay claim (e.g. a claim being renewed).
  for (const id of Object.keys(stream.nodes)) {
    if (nodes.has(id)) continue;
    const extra = { id, children: [], missing: true, orphan: true };
    nodes.set(id, extra);
    nodes.get(rootId).children.push(extra);
  }
  const byId = (a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  for (const n of nodes.values()) n.children.sort(byId);
  return nodes.get(rootId);
}

function isAncestor(candidate, node) {
  if (candidate === node) return true;
  return candidate.children.some((c) => isAncestor(c, node));
}

/** A string that changes whenever the drawing would, so the SVG (and its animation) is only redrawn then. */
export function treeSignature(stream, selfId) {
  const viewers = Object.entries(stream.nodes).map(([id, n]) => `${id}:${n.viewers}:${n.live}`);
  const relays = stream.relays.map((r) => `${r.node}<${r.parent}`);
  return JSON.stringify([stream.key, stream.owner, selfId, viewers.sort(), relays.sort()]);
}

/** Renders the tree into an <svg> element, or returns null when the stream has no owner yet. */
export function renderTree(stream, selfId) {
  const root = buildTree(stream);
  if (!root) return null;

  // Positions: x in leaf slots, y in levels.
  let nextLeaf = 0;
  let depth = 0;
  const placed = [];
  const place = (n, level, parent) => {
    depth = Math.max(depth, level);
    n.parent = parent;
    if (n.children.length === 0) n.slot = nextLeaf++;
    else {
      for (const c of n.children) place(c, level + 1, n);
      n.slot = (n.children[0].slot + n.children[n.children.length - 1].slot) / 2;
    }
    n.level = level;
    placed.push(n);
  };
  place(root, 0, null);

  const leaves = Math.max(1, nextLeaf);
  const width = PAD * 2 + leaves * BOX_W + (leaves - 1) * GAP_X;
  const height = PAD * 2 + (depth + 1) * BOX_H + depth * GAP_Y;
  const cx = (n) => PAD + n.slot * (BOX_W + GAP_X) + BOX_W / 2;
  const top = (n) => PAD + n.level * (BOX_H + GAP_Y);

  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    'aria-label': `relay tree of ${stream.key}`,
  });

  // Scale down to fit, and only a little up: a lone owner stays box-sized.
  svg.style.maxWidth = `${Math.round(width * 1.3)}px`;

  const edges = s('g', { class: 'edges' });
  const boxes = s('g', { class: 'nodes' });
  svg.append(edges, boxes);

  for (const n of placed) {
    for (const c of n.children) {
      const x1 = cx(n);
      const y1 = top(n) + BOX_H;
      const x2 = cx(c);
      const y2 = top(c);
      const my = (y1 + y2) / 2;
      const d = `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}`;
      edges.append(s('path', { class: 'edge', d }));
      if (!c.missing) edges.append(s('path', { class: 'edge flow', d }));
    }
  }

  for (const n of placed) {
    const at = stream.nodes[n.id];
    const isOwner = n === root;
    const classes = ['node', isOwner ? 'n-owner' : 'n-relay', n.id === selfId ? 'n-self' : '', n.missing ? 'n-missing' : ''].filter(Boolean).join(' ');
    const x = cx(n) - BOX_W / 2;
    const y = top(n);
    const viewers = at ? at.viewers : 0;
    const sub = at ? `${viewers} viewer${viewers === 1 ? '' : 's'}${at.live ? '' : ' · waiting'}` : 'no local players';
    const g = s(
      'g',
      { class: classes, transform: `translate(${x},${y})`, data: { node: n.id, parent: n.parent ? n.parent.id : '' } },
      s('title', { text: `${n.id}${isOwner ? ' (owner)' : ''}${n.orphan && !isOwner ? ' — parent unknown' : ''}` }),
      s('rect', { class: 'box', width: BOX_W, height: BOX_H, rx: 10, ry: 10 }),
      s('text', { class: 'title', x: 12, y: 21, text: clip(n.id, 17) }),
      s('text', { class: 'sub', x: 12, y: 38, text: sub }),
    );
    if (isOwner) g.append(s('text', { class: 'tag', x: BOX_W - 10, y: 16, 'text-anchor': 'end', text: 'OWNER' }));
    boxes.append(g);
  }
  return svg;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
