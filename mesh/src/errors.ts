/**
 * Typed errors of the mesh control plane. Every error has a stable `code`
 * so callers can switch on it without `instanceof` across package copies.
 */
export class MeshError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** An app or stream name cannot be turned into a subject/KV token (too long, not well-formed Unicode). */
export class StreamNameError extends MeshError {
  constructor(message: string) {
    super('STREAM_NAME', message);
  }
}

/** A token handed to `decodeStreamToken` is not something `encodeStreamToken` produces. */
export class StreamTokenError extends MeshError {
  constructor(message: string) {
    super('STREAM_TOKEN', message);
  }
}

/** Node ids must match `[A-Za-z0-9_-]{1,64}` (they appear verbatim in subjects and keys). */
export class NodeIdError extends MeshError {
  constructor(id: string) {
    super('NODE_ID', `invalid node id ${JSON.stringify(id).slice(0, 80)}: must match [A-Za-z0-9_-]{1,64}`);
  }
}

/** Configuration rejected at construction (bad prefix, timings that cannot work, ...). */
export class MeshConfigError extends MeshError {
  constructor(message: string) {
    super('MESH_CONFIG', message);
  }
}

/** The stream is owned (live lease) by another node and takeover was not allowed (`duplicate_publish: reject`). */
export class StreamOwnedError extends MeshError {
  readonly owner: string;
  readonly app: string;
  readonly stream: string;
  constructor(app: string, stream: string, owner: string) {
    super('STREAM_OWNED', `stream ${app}/${stream} is already being published on node ${owner}`);
    this.owner = owner;
    this.app = app;
    this.stream = stream;
  }
}

/** The bus is not connected (memory: partitioned; NATS: disconnected/reconnecting) or closed. */
export class BusUnavailableError extends MeshError {
  constructor(message = 'bus unavailable', options?: { cause?: unknown }) {
    super('BUS_UNAVAILABLE', message, options);
  }
}

/** request/reply: nobody answered within the timeout. */
export class BusTimeoutError extends MeshError {
  constructor(subject: string, timeoutMs: number, options?: { cause?: unknown }) {
    super('BUS_TIMEOUT', `no reply on ${subject} within ${timeoutMs} ms`, options);
  }
}

/** request/reply: no subscriber on the subject. */
export class BusNoRespondersError extends MeshError {
  constructor(subject: string, options?: { cause?: unknown }) {
    super('BUS_NO_RESPONDERS', `no responders on ${subject}`, options);
  }
}

/** KV `create` on a key that holds a live value. */
export class KvKeyExistsError extends MeshError {
  readonly key: string;
  constructor(bucket: string, key: string, options?: { cause?: unknown }) {
    super('KV_KEY_EXISTS', `key ${key} already exists in ${bucket}`, options);
    this.key = key;
  }
}

/** KV compare-and-set (`update`/`delete` with a revision) found a different revision. */
export class KvRevisionMismatchError extends MeshError {
  readonly key: string;
  constructor(bucket: string, key: string, expected: number, options?: { cause?: unknown }) {
    super('KV_REVISION_MISMATCH', `key ${key} in ${bucket} is not at revision ${expected}`, options);
    this.key = key;
  }
}

/** Anything else the KV or event log backend reported. */
export class KvError extends MeshError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KV_ERROR', message, options);
  }
}

/** Operation on a lease that is no longer held. */
export class LeaseLostError extends MeshError {
  constructor(message: string) {
    super('LEASE_LOST', message);
  }
}
