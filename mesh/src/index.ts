/**
 * @meshcast/mesh — the control plane of a meshcast node (docs/design.md).
 * Knows nothing of RTMP: streams are (app, stream) strings.
 */
export type {
  Bus,
  BusHandler,
  BusMessage,
  BusStatus,
  BusSubscription,
  EventFollower,
  EventLog,
  EventLogEntry,
  EventReadOptions,
  KvBucket,
  KvBucketOptions,
  KvEntry,
  KvOperation,
  KvWatcher,
  KvWatchOptions,
  KvWriteOptions,
  RequestOptions,
} from './bus.ts';
export { subjectMatches } from './bus.ts';
export { SealedBus, SealError, SEAL_WINDOW_MS, peelSeal, seal, sealKey, unseal, type SealContext, type SealedBusOptions } from './sealed-bus.ts';
export { MemoryBusNetwork, type MemoryBusNetworkOptions } from './memory-bus.ts';
export { connectNatsBus, type NatsBusOptions } from './nats-bus.ts';
export { DEFAULT_PREFIX, meshNames, validateNodeId, validatePrefix, type MeshNames } from './names.ts';
export { PROCESS_BOOT_ID } from './boot-id.ts';
export {
  BusNoRespondersError,
  BusTimeoutError,
  BusUnavailableError,
  KvError,
  KvKeyExistsError,
  KvRevisionMismatchError,
  LeaseLostError,
  MeshConfigError,
  MeshError,
  NodeIdError,
  StreamNameError,
  StreamOwnedError,
  StreamTokenError,
} from './errors.ts';
export { decodeNameToken, decodeStreamToken, encodeNameToken, encodeStreamToken, MAX_STREAM_TOKEN_BYTES } from './stream-token.ts';
export {
  Membership,
  type LoadSample,
  type MembershipChange,
  type MembershipChangeKind,
  type MembershipOptions,
  type NodeState,
  type NodeView,
} from './membership.ts';
export type { LeaseLostCode, LeaseLostReason } from './lease.ts';
export {
  OwnershipRegistry,
  type AcquireRecord,
  type OwnerChange,
  type OwnershipInfo,
  type OwnershipLease,
  type OwnershipRegistryOptions,
} from './ownership.ts';
export {
  chooseRelayParent,
  DEFAULT_FANOUT,
  RelayClaims,
  type RelayClaimChange,
  type RelayClaimInfo,
  type RelayClaimsOptions,
  type RelayLease,
  type RelayParentInput,
} from './relays.ts';
export {
  BoundedLoadRing,
  DEFAULT_LOAD_FACTOR,
  rankPlaybackNodes,
  ringNodesFromTable,
  type PlacementNode,
  type RankedNode,
  type RankOptions,
  type RingNodeInput,
} from './placement.ts';
export { hash01, hash53, hrwScore } from './hash.ts';
export { MeshEvents, type MeshEventRecord } from './events.ts';
export {
  Backoff,
  DEFAULT_BACKOFF_BASE_MS,
  DEFAULT_BACKOFF_CAP_MS,
  DEFAULT_FAILURE_LOG_INTERVAL_MS,
  FailureLogLimiter,
  type BackoffOptions,
  type FailureLogDecision,
  type FailureLogOptions,
} from './backoff.ts';
export { PeerLogLimiter, DEFAULT_PEER_LOG_BURST, DEFAULT_PEER_LOG_INTERVAL_MS, DEFAULT_PEER_LOG_MAX_PEERS, type PeerLogOptions } from './peer-log.ts';
