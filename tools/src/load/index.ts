/** Load generation: a looping FLV publisher and RTMP viewer swarms (in-process or over worker processes). */
export * from './flv-source.ts';
export * from './clock.ts';
export * from './publisher.ts';
export * from './stats.ts';
export * from './swarm.ts';
export * from './workers.ts';
