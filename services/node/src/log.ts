import pino from 'pino';

export type Logger = pino.Logger;

/** One root logger per node: every line carries the node id; sessions and streams add theirs via child(). */
export function createLogger(nodeId: string, level: string, destination?: pino.DestinationStream): Logger {
  return pino({ level, base: { node: nodeId }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}
