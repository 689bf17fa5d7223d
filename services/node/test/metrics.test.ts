/** Prometheus `/metrics` of in-process nodes: values after a publish and a viewer, counters that only grow, one registry per node. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBusNetwork } from '@meshcast/mesh';
import type { MediaNode } from '../src/media-node.ts';
import { inProcessNode, recordingViewer, rtmpUrl, sleep, syntheticPublisher, until } from './support.ts';

interface Family {
  type: string;
  help: string;
}
interface Scrape {
  families: Map<string, Family>;
  /** `name{a="x",b="y"}` (labels sorted, `node` left out) → value. */
  samples: Map<string, number>;
  contentType: string;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_PAIR = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parses the Prometheus text exposition format strictly enough to catch malformed output. */
function parseExposition(text: string, contentType: string): Scrape {
  const families = new Map<string, Family>();
  const samples = new Map<string, number>();
  assert.ok(text.endsWith('\n'), 'exposition ends with a newline');
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      assert.ok(m, `comment line: ${line}`);
      const [, kind, name, rest] = m as unknown as [string, string, string, string];
      assert.match(name, NAME);
      const f = families.get(name) ?? { type: '', help: '' };
      if (kind === 'TYPE') {
        assert.match(rest, /^(counter|gauge|histogram|summary|untyped)$/, `type of ${name}`);
        f.type = rest;
      } else f.help = rest;
      families.set(name, f);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \d+)?$/.exec(line);
    assert.ok(m, `sample line: ${line}`);
    const [, name, , labelText = ''] = m as unknown as [string, string, string | undefined, string | undefined];
    const raw = (m as RegExpExecArray)[4] as string;
    // Go's ParseFloat (Prometheus) takes NaN and ±Inf in any case; prom-client writes `Nan`.
    assert.ok(/^(nan|[+-]?inf)$/i.test(raw) || raw.trim() !== '' && !Number.isNaN(Number(raw)), `numeric value: ${line}`);
    const value = /^nan$/i.test(raw) ? NaN : /^[+-]?inf$/i.test(raw) ? (raw.startsWith('-') ? -Infinity : Infinity) : Number(raw);
    const labels: Array<[string, string]> = [];
    const rebuilt = labelText.replace(LABEL_PAIR, (_all, k: string, v: string) => {
      labels.push([k, v]);
      return '';
    });
    assert.match(rebuilt, /^,*$/, `labels well-formed: ${line}`);
    const family = [name, name.replace(/_(bucket|sum|count|total|created)$/, '')].find((n) => families.has(n));
    assert.ok(family, `sample ${name} belongs to a declared family`);
    const key = labels.filter(([k]) => k !== 'node').sort(([a], [b]) => (a < b ? -1 : 1));
    samples.set(key.length ? `${name}{${key.map(([k, v]) => `${k}="${v}"`).join(',')}}` : name, value);
  }
  return { families, samples, contentType };
}

async function scrape(node: MediaNode): Promise<Scrape & { text: string }> {
  const r = await fetch(`${node.adminUrl}/metrics`);
  assert.equal(r.status, 200);
  const text = await r.text();
  return { ...parseExposition(text, r.headers.get('content-type') ?? ''), text };
}

function value(s: Scrape, series: string): number {
  const v = s.samples.get(series);
  assert.ok(v !== undefined, `series ${series} present`);
  return v;
}

describe('/metrics', () => {
  const network = new MemoryBusNetwork();
  let node: MediaNode;
  let other: MediaNode;

  before(async () => {
    node = await inProcessNode(network, 'metrics-a');
    other = await inProcessNode(network, 'metrics-b');
  });

  after(async () => {
    await Promise.all([node?.stop(), other?.stop()]);
  });

  test('an idle node exposes every family at zero, in the text format, labelled with its node id', async () => {
    const s = await scrape(node);
    assert.match(s.contentType, /^text\/plain; version=0\.0\.4/);
    assert.match(s.text, /meshcast_viewers\{protocol="rtmp",node="metrics-a"\} 0/);
    for (const p of ['rtmp', 'http-flv', 'ws-flv', 'hls']) assert.equal(value(s, `meshcast_viewers{protocol="${p}"}`), 0);
    assert.equal(value(s, 'meshcast_publishers{protocol="rtmp"}'), 0);
    assert.equal(value(s, 'meshcast_media_bytes_out_total'), 0);
    assert.equal(value(s, 'meshcast_leases_held'), 0);
    assert.equal(value(s, 'meshcast_relays_held'), 0);
    assert.equal(value(s, 'meshcast_bus_status{kind="embedded",status="connected"}'), 1);
    assert.equal(value(s, 'meshcast_bus_status{kind="embedded",status="disconnected"}'), 0);
    assert.equal(value(s, 'meshcast_node_state{state="running"}'), 1);
    // prom-client's default metrics under their standard names (stock Node.js dashboards read them),
    // event-loop lag among them: the process's, so without a node label.
    assert.ok(value(s, 'nodejs_eventloop_lag_seconds') >= 0);
    assert.match(s.text, /^nodejs_eventloop_lag_seconds \S+$/m);
    assert.ok(value(s, 'process_resident_memory_bytes') > 0);
    // prom-client counts CPU from when the metric was registered: a scrape right after start may read 0.
    assert.ok(value(s, 'process_cpu_user_seconds_total') >= 0);
    assert.equal(s.families.get('process_cpu_user_seconds_total')?.type, 'counter');
    assert.doesNotMatch(s.text, /^meshcast_(process|nodejs)_/m, 'only meshcast\'s own metrics carry the prefix');
    assert.equal(s.families.get('meshcast_media_bytes_out_total')?.type, 'counter');
    assert.equal(s.families.get('meshcast_viewers')?.type, 'gauge');
  });

  test('after a publish and a viewer: publishers 1, rtmp viewers 1, a lease, and byte counters that grow between scrapes', async () => {
    const pub = await syntheticPublisher(rtmpUrl(node, 'live/metered'));
    const viewer = await recordingViewer(rtmpUrl(node, 'live/metered'));
    try {
      await until('viewer gets video', () => viewer.video().length > 10);
      const first = await scrape(node);
      assert.equal(value(first, 'meshcast_publishers{protocol="rtmp"}'), 1);
      assert.equal(value(first, 'meshcast_viewers{protocol="rtmp"}'), 1);
      assert.equal(value(first, 'meshcast_viewers{protocol="http-flv"}'), 0);
      assert.equal(value(first, 'meshcast_connections{protocol="rtmp",role="publisher"}'), 1);
      assert.equal(value(first, 'meshcast_connections{protocol="rtmp",role="viewer"}'), 1);
      assert.equal(value(first, 'meshcast_connections_admitted'), 2);
      assert.equal(value(first, 'meshcast_streams{source="rtmp"}'), 1);
      assert.equal(value(first, 'meshcast_stream_sinks'), 1);
      assert.equal(value(first, 'meshcast_leases_held'), 1);
      assert.equal(value(first, 'meshcast_ownership_changes_total{change="acquired"}'), 1);
      assert.equal(value(first, 'meshcast_ownership_changes_total{change="released"}'), 0);
      assert.equal(value(first, 'meshcast_dropped_frames_total'), 0);
      assert.equal(value(first, 'meshcast_evicted_viewers_total'), 0);
      for (const series of ['meshcast_media_bytes_in_total', 'meshcast_media_bytes_out_total', 'meshcast_frames_in_total', 'meshcast_session_bytes_total{direction="in",protocol="rtmp"}', 'meshcast_session_bytes_total{direction="out",protocol="rtmp"}']) {
        assert.ok(value(first, series) > 0, `${series} > 0`);
      }

      await sleep(400);
      const second = await scrape(node);
      for (const series of ['meshcast_media_bytes_in_total', 'meshcast_media_bytes_out_total', 'meshcast_frames_in_total', 'meshcast_session_bytes_total{direction="in",protocol="rtmp"}', 'meshcast_session_bytes_total{direction="out",protocol="rtmp"}']) {
        assert.ok(value(second, series) > value(first, series), `${series} grows: ${value(first, series)} → ${value(second, series)}`);
      }

      // The other node of the same process has its own registry: none of this shows there.
      const elsewhere = await scrape(other);
      assert.equal(value(elsewhere, 'meshcast_viewers{protocol="rtmp"}'), 0);
      assert.equal(value(elsewhere, 'meshcast_media_bytes_out_total'), 0);
      assert.match(elsewhere.text, /node="metrics-b"/);
      assert.doesNotMatch(elsewhere.text, /node="metrics-a"/);

      viewer.client.close();
      pub.stop();
      await until('stream gone from the node', () => node.registry.list().length === 0);
      const after = await scrape(node);
      assert.equal(value(after, 'meshcast_publishers{protocol="rtmp"}'), 0);
      assert.equal(value(after, 'meshcast_viewers{protocol="rtmp"}'), 0);
      assert.equal(value(after, 'meshcast_streams{source="rtmp"}'), 0);
      assert.equal(value(after, 'meshcast_ownership_changes_total{change="released"}'), 1);
      await until('lease released', () => node.nodeInfo().leases === 0);
      assert.equal(value(await scrape(node), 'meshcast_leases_held'), 0);
      // Counters keep what the closed stream carried.
      for (const series of ['meshcast_media_bytes_in_total', 'meshcast_media_bytes_out_total', 'meshcast_frames_in_total']) {
        assert.ok(value(after, series) >= value(second, series), `${series} never goes down`);
      }
    } finally {
      viewer.client.close();
      pub.stop();
    }
  });

  test('a viewer on another node: a relay held there, a relay pull (not a viewer) on the owner', async () => {
    const pub = await syntheticPublisher(rtmpUrl(node, 'live/relayed'));
    try {
      await until('owner announced', async () => (await fetch(`${other.adminUrl}/api/v1/mesh/streams`).then((r) => r.json()) as { streams: unknown[] }).streams.length > 0);
      const viewer = await recordingViewer(rtmpUrl(other, 'live/relayed'));
      try {
        await until('relayed video', () => viewer.video().length > 5);
        const edge = await scrape(other);
        assert.equal(value(edge, 'meshcast_relays_held'), 1);
        assert.equal(value(edge, 'meshcast_streams{source="relay"}'), 1);
        assert.equal(value(edge, 'meshcast_viewers{protocol="rtmp"}'), 1);
        assert.equal(value(edge, 'meshcast_leases_held'), 0);
        const origin = await scrape(node);
        assert.equal(value(origin, 'meshcast_viewers{protocol="rtmp"}'), 0, 'a relay is not a player');
        assert.equal(value(origin, 'meshcast_relay_pulls'), 1, 'the relay pulls from the owner');
        assert.equal(value(origin, 'meshcast_stream_sinks'), 1);
      } finally {
        viewer.client.close();
      }
    } finally {
      pub.stop();
    }
  });
});
