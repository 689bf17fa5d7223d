export * from './rtmp-client.ts';
export * from './synthetic-source.ts';
