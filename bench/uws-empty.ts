/**
 * Ceiling of the HTTP layer: a uWebSockets.js server (the same native binary the
 * proxy loads) whose handler reads the body and answers a fixed small JSON at once.
 * Run as a child process: `node dist/bench/uws-empty.js --port N`; prints "listening PORT".
 */
import { loadUws } from '../src/http/uws.js';
import { parseArgs } from './lib/args.js';

const { port } = parseArgs('node dist/bench/uws-empty.js [--port N]', {
  port: { type: 'number', help: 'port on 127.0.0.1 (0: any free one)', default: 0 },
});
const uws = loadUws();
const BODY = '{"ok":true}';

const app = uws.App();
app.post('/*', (res) => {
  res.onAborted(() => undefined);
  res.onData((_chunk, isLast) => {
    if (isLast) {
      res.cork(() => {
        res.writeStatus('200 OK').writeHeader('content-type', 'application/json').end(BODY);
      });
    }
  });
});
app.get('/*', (res) => {
  res.end(BODY);
});
app.listen('127.0.0.1', port, (socket) => {
  if (!socket) {
    process.stderr.write(`uws-empty: cannot listen on ${port}\n`);
    process.exit(1);
  }
  process.stdout.write(`listening ${uws.us_socket_local_port(socket as never)}\n`);
});
process.once('SIGTERM', () => process.exit(0));
