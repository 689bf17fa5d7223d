import pino from 'pino';
import pretty from 'pino-pretty';

export type Logger = pino.Logger;

/**
 * One root logger per node: every line carries the node id; sessions and streams add theirs via
 * child(). A person at a terminal gets one readable line per entry (node, app/stream and session
 * up front); anything else (a pipe, a file, a log collector) gets JSON, one object per line.
 */
export function createLogger(nodeId: string, level: string, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = { level, base: { node: nodeId }, timestamp: pino.stdTimeFunctions.isoTime };
  if (destination) return pino(options, destination);
  if (process.stdout.isTTY) return pino(options, prettyStream());
  return pino(options, pino.destination({ sync: false }));
}

/** Human-readable lines for a terminal: `12:00:01.123 INFO node live/cam session: message` + other fields. */
export function prettyStream(destination: NodeJS.WritableStream | number = 1): pino.DestinationStream {
  return pretty({
    destination,
    sync: true,
    colorize: process.stdout.isTTY === true,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname,node,app,stream,session',
    messageFormat: '{node}{if app} {app}{end}{if stream}/{stream}{end}{if session} {session}{end}: {msg}',
    singleLine: false,
  });
}
