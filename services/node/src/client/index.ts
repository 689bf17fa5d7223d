export * from './rtmp-client.ts';
