/**
 * The process instance of this node: random at process start. Ownership records and relay claims carry it,
 * so a node restarted with the same node id within a lease tells its predecessor's stale lease and claims
 * (same node id, another boot id) from its own live ones and takes them over at once.
 */
import { randomBytes } from 'node:crypto';

export const PROCESS_BOOT_ID: string = randomBytes(8).toString('hex');
