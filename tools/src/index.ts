export * from './load/index.ts';
export { startNginx, startMeshcast, startNms, type ServerHandle, type ServerOptions } from './bench/servers.ts';
