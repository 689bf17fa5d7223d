/**
 * Relay trees (docs/design.md) built with the real `chooseRelayParent`: for each watched
 * stream, its serving nodes start their relays in the order their first viewer arrived;
 * each asks chooseRelayParent for a parent given the claims made so far (children
 * counted from the parent pointers and the claims' own child counts). The owner is the
 * publisher's ingest node, not a playback node, so every serving node is a relay.
 */
import { chooseRelayParent } from '@meshcast/mesh';

export interface TreeStats {
  streams: number;
  /** Σ over streams of (owner's direct children × bitrate) */
  originEgressGbps: number;
  /** what the origins would send if every relay pulled from the owner (no tree) */
  noTreeOriginGbps: number;
  maxOwnerChildren: number;
  maxDepth: number;
  /** viewer-weighted mean depth of the relay a viewer is served by (owner's children = 1) */
  meanViewerDepth: number;
  /** relays at depth 1, 2, 3, … */
  depthHistogram: number[];
  /** times chooseRelayParent returned undefined and the relay attached to the owner anyway */
  fallbacks: number;
}

export interface StreamRelays {
  token: string;
  owner: string;
  /** serving nodes in the order their relay started */
  relays: string[];
  /** viewers on each of them */
  viewers: number[];
}

interface Claim {
  node: string;
  parent: string;
  children: number;
}

/** Build one stream's tree; returns each relay's depth, the owner's child count and the fallbacks. */
export function buildTree(s: StreamRelays, fanout: number, alive: ReadonlySet<string>): { depth: number[]; ownerChildren: number; fallbacks: number } {
  const claims: Claim[] = [];
  const byNode = new Map<string, { claim: Claim; depth: number }>();
  const depth: number[] = [];
  let ownerChildren = 0;
  let fallbacks = 0;
  for (const self of s.relays) {
    let parent = chooseRelayParent({ streamToken: s.token, selfId: self, owner: s.owner, claims, fanout, alive });
    if (parent === undefined) {
      fallbacks++;
      parent = s.owner;
    }
    let d = 1;
    if (parent === s.owner) ownerChildren++;
    else {
      const p = byNode.get(parent);
      if (!p) throw new Error(`chooseRelayParent chose ${parent}, which has no claim`);
      p.claim.children++;
      d = p.depth + 1;
    }
    const claim: Claim = { node: self, parent, children: 0 };
    claims.push(claim);
    byNode.set(self, { claim, depth: d });
    depth.push(d);
  }
  return { depth, ownerChildren, fallbacks };
}

/**
 * Depth of the j-th relay of a stream (0-based, in start order) when the relays start one
 * after the other with no failures. chooseRelayParent fills the shallowest level with room
 * first, so this does not depend on the stream or the node names — only on j (tested).
 * Computed by a real build of a reference tree, grown on demand.
 */
const profiles = new Map<number, Int32Array>();
export function depthProfile(fanout: number, k: number): Int32Array {
  const have = profiles.get(fanout);
  if (have && have.length >= k) return have;
  const size = Math.max(k, (have?.length ?? 0) * 2, 64);
  const relays = Array.from({ length: size }, (_, i) => `ref-${i}`);
  const alive = new Set(relays);
  const t = buildTree({ token: 'ref.profile', owner: 'ref-owner', relays, viewers: [] }, fanout, alive);
  const p = Int32Array.from(t.depth);
  profiles.set(fanout, p);
  return p;
}

/**
 * Trees of all watched streams: streams with up to `exactUpTo` relays (almost all of
 * them) are built one by one with the real chooseRelayParent; bigger ones take their
 * depths from the depth profile (itself a real build), because building a k-relay tree
 * costs O(k²) calls' worth of work.
 */
export function treeStats(streams: readonly StreamRelays[], fanout: number, alive: ReadonlySet<string>, bitrateMbps: number, exactUpTo = 4 * fanout): TreeStats {
  let owner = 0;
  let relays = 0;
  let maxOwner = 0;
  let maxDepth = 0;
  let fallbacks = 0;
  let vDepth = 0;
  let viewers = 0;
  const hist: number[] = [];
  for (const s of streams) {
    const k = s.relays.length;
    let depth: ArrayLike<number>;
    let ownerChildren: number;
    if (k <= exactUpTo) {
      const t = buildTree(s, fanout, alive);
      depth = t.depth;
      ownerChildren = t.ownerChildren;
      fallbacks += t.fallbacks;
    } else {
      depth = depthProfile(fanout, k);
      ownerChildren = Math.min(k, fanout);
    }
    owner += ownerChildren;
    relays += k;
    maxOwner = Math.max(maxOwner, ownerChildren);
    for (let j = 0; j < k; j++) {
      const d = depth[j] as number;
      maxDepth = Math.max(maxDepth, d);
      hist[d - 1] = (hist[d - 1] ?? 0) + 1;
      const v = s.viewers[j] ?? 0;
      vDepth += v * d;
      viewers += v;
    }
  }
  return {
    streams: streams.length,
    originEgressGbps: Math.round(owner * bitrateMbps) / 1000,
    noTreeOriginGbps: Math.round(relays * bitrateMbps) / 1000,
    maxOwnerChildren: maxOwner,
    maxDepth,
    meanViewerDepth: Math.round((vDepth / Math.max(1, viewers)) * 1000) / 1000,
    depthHistogram: Array.from(hist, (x) => x ?? 0),
    fallbacks,
  };
}
