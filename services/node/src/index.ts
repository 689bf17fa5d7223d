export * from './config.ts';
export * from './log.ts';
export * from './media-node.ts';
export * from './start-node.ts';
export * from './media/frame.ts';
export * from './media/stream-hub.ts';
export * from './media/host.ts';
export * from './sessions.ts';
