/**
 * Subject, bucket and stream names of the control plane (docs/design.md), all
 * derived from one configurable prefix (default `meshcast`).
 */
import { NODE_ID_PATTERN } from '@meshcast/proto';
import { MeshConfigError, NodeIdError } from './errors.ts';

export const DEFAULT_PREFIX = 'meshcast';

const PREFIX_PATTERN = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$/;

export interface MeshNames {
  readonly prefix: string;
  /** `<prefix>.node.<node>.hb` */
  heartbeat(node: string): string;
  /** `<prefix>.node.*.hb` */
  readonly heartbeatAll: string;
  /** `<prefix>.node.<node>.bye` */
  bye(node: string): string;
  /** `<prefix>.node.*.bye` */
  readonly byeAll: string;
  /** `<prefix>.node.<node>.rpc.<verb>` */
  rpc(node: string, verb: string): string;
  /** `<prefix>.events` — event subjects are `<prefix>.events.<suffix>` */
  readonly eventsBase: string;
  /** `<prefix>.events.>` */
  readonly eventsAll: string;
  /** JetStream stream holding the events: `MESHCAST_EVENTS` for the default prefix. */
  readonly eventsStream: string;
  /** KV bucket of stream ownership: `meshcast-streams` for the default prefix. */
  readonly streamsBucket: string;
  /** KV bucket of relay claims: `meshcast-relays` for the default prefix. */
  readonly relaysBucket: string;
}

export function validatePrefix(prefix: string): string {
  if (typeof prefix !== 'string' || prefix.length > 64 || !PREFIX_PATTERN.test(prefix)) {
    throw new MeshConfigError(
      `invalid subject prefix ${JSON.stringify(prefix)}: dot-separated tokens of [A-Za-z0-9_-], at most 64 characters`,
    );
  }
  return prefix;
}

export function validateNodeId(id: string): string {
  if (typeof id !== 'string' || !NODE_ID_PATTERN.test(id)) throw new NodeIdError(String(id));
  return id;
}

export function meshNames(prefix: string = DEFAULT_PREFIX): MeshNames {
  const p = validatePrefix(prefix);
  const flat = p.replace(/\./g, '-');
  return {
    prefix: p,
    heartbeat: (node) => `${p}.node.${validateNodeId(node)}.hb`,
    heartbeatAll: `${p}.node.*.hb`,
    bye: (node) => `${p}.node.${validateNodeId(node)}.bye`,
    byeAll: `${p}.node.*.bye`,
    rpc: (node, verb) => {
      if (!/^[A-Za-z0-9_-]+$/.test(verb)) throw new MeshConfigError(`invalid rpc verb ${JSON.stringify(verb)}`);
      return `${p}.node.${validateNodeId(node)}.rpc.${verb}`;
    },
    eventsBase: `${p}.events`,
    eventsAll: `${p}.events.>`,
    eventsStream: `${flat.toUpperCase().replace(/-/g, '_')}_EVENTS`,
    streamsBucket: `${flat}-streams`,
    relaysBucket: `${flat}-relays`,
  };
}
