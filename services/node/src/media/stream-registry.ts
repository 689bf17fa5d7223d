/** The streams present on this node (published here, relayed here, or awaited by viewers). */
import { EventEmitter } from 'node:events';
import { StreamHub, type HubOptions } from './stream-hub.ts';
import type { Logger } from '../log.ts';

export class StreamRegistry extends EventEmitter {
  private readonly hubs = new Map<string, StreamHub>();

  constructor(
    private readonly hubOptions: HubOptions,
    private readonly log: Logger,
  ) {
    super();
  }

  get(app: string, stream: string): StreamHub | undefined {
    return this.hubs.get(`${app}/${stream}`);
  }

  /** The hub for a stream, created on first use and dropped when nobody publishes or watches it. */
  open(app: string, stream: string): StreamHub {
    const key = `${app}/${stream}`;
    let hub = this.hubs.get(key);
    if (hub) return hub;
    hub = new StreamHub(app, stream, this.hubOptions, this.log.child({ app, stream }));
    const created = hub;
    created.on('idle', () => {
      // Idle is re-checked on the next tick: a viewer leaving and a relay attaching can happen in one turn.
      setImmediate(() => {
        if (created.idle && this.hubs.get(key) === created) {
          this.hubs.delete(key);
          this.emit('closed', created);
        }
      });
    });
    this.hubs.set(key, created);
    this.emit('opened', created);
    return created;
  }

  list(): StreamHub[] {
    return [...this.hubs.values()];
  }

  closeAll(reason: string): void {
    for (const hub of [...this.hubs.values()]) hub.close(reason);
    this.hubs.clear();
  }
}
