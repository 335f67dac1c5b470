/**
 * A worker thread of `[server] workers`: one more uWebSockets.js event loop on the main thread's
 * host:port (SO_REUSEPORT: the kernel spreads new connections over the loops), with its own HSM
 * engine (its share of the session pool and addon threads; the PKCS#11 module itself is loaded and
 * initialized once per process, reference counted in the addon), SigV4 verifier, routes, quotas
 * (1/count of each) and metrics. Its log lines go to the main thread, which owns the sinks.
 *
 * Stop: drain like the main thread, then close every connection (uWS handles left open when a
 * worker thread exits abort the whole process), close the engine, flush the log, say 'stopped'
 * and close the port, so the thread ends by itself.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Writable } from 'node:stream';
import type { Config } from '../config.js';
import { ChannelSink } from '../audit/channel.js';
import { Hsm, type HealthSource, type HealthVerdict } from '../hsm/hsm.js';
import { startServer, type RunningServer } from '../http/server.js';
import { createLogger, createNullLogger, type BufferedLogger } from '../log.js';
import { keyStoreRoutes, loadAuthorizer, Reloader } from '../reload.js';
import { fromSettingsMessage, isWorkerInit, type FromWorker, type ToWorker, type WorkerInit } from './protocol.js';
import { baseServerOptions, drainWithGrace, engineOptions, metricsFor, opContext } from './serving.js';

class ForwardedHealth implements HealthSource {
  constructor(public verdict: HealthVerdict) {}
  current(): HealthVerdict {
    return this.verdict;
  }
}

if (parentPort === null || !isWorkerInit(workerData)) throw new Error('src/workers/thread.js runs only as a worker thread of the proxy');
const port = parentPort;
const init: WorkerInit = workerData;
const send = (m: FromWorker): void => port.postMessage(m);

/** The worker's logger: same level, lines (tagged worker=N) posted in batches to the main thread. */
function workerLogger(config: Config): BufferedLogger {
  const out = new Writable({
    decodeStrings: false,
    write(chunk: string | Buffer, _enc, cb) {
      send({ type: 'log', lines: typeof chunk === 'string' ? chunk : chunk.toString('utf8') });
      cb();
    },
  });
  const anySink = config.tracing.is_stdout_writer_enabled || config.tracing.is_file_writer_enabled;
  return createLogger(
    { ...config.tracing, is_stdout_writer_enabled: anySink, is_file_writer_enabled: false },
    { stdout: out, context: { worker: init.index }, flushIntervalMs: 20 },
  );
}

async function run(): Promise<void> {
  // The main thread's parsed settings: every loop runs the same file, read once.
  const loaded = fromSettingsMessage(init.settings);
  const { config } = loaded;
  const log = workerLogger(config);
  let hsm: Hsm | undefined;
  let server: RunningServer | undefined;
  try {
    const authorizer = await loadAuthorizer(config);
    // Its logger: the once-a-minute IV error and other engine lines of this loop (start-up notes are the main thread's).
    hsm = await Hsm.open(engineOptions(config, init), log);
    const health = init.health === undefined ? undefined : new ForwardedHealth(init.health);
    if (health) hsm.setHealthSource(health);
    const engine = hsm;
    // Counted only when [metrics] serves them; the main thread's listener asks for snapshots.
    const metrics = config.metrics.enabled ? metricsFor(engine) : undefined;
    const keyStores = keyStoreRoutes(config, undefined, init.count);
    const base = baseServerOptions(config, init.port);
    // The trail's records go straight to the process's writer thread.
    const audit = init.audit === undefined ? undefined : new ChannelSink(init.audit, () => send({ type: 'audit-served-without' }));
    server = await startServer(
      { ...base, pingListener: false, portSharing: 'join', keyStores, authorizer, metrics },
      opContext(config, hsm, audit),
      log,
    );
    const running = server;
    // The worker's reloader logs nothing: the main thread reports the reload once.
    const reloader = new Reloader(loaded.file, loaded, keyStores, running, createNullLogger(), process.env, init.count);
    log.debug('worker thread serving', { port: running.port, pool: init.poolMaxSize, hsm_threads: init.threads });

    const stop = async (drainMs: number): Promise<void> => {
      running.startDraining();
      running.close();
      const drained = await drainWithGrace(running, drainMs);
      if (!drained) log.warn('stopping with requests still in flight', { waited_ms: drainMs });
      running.closeConnections();
      audit?.close();
      await engine.close();
      await log.close();
      send({ type: 'stopped', drained });
      port.close();
    };

    port.on('message', (m: ToWorker) => {
      switch (m.type) {
        case 'snapshot':
          if (metrics !== undefined) send({ type: 'snapshot', id: m.id, snapshot: metrics.snapshot() });
          break;
        case 'reload':
          void reloader
            .apply(fromSettingsMessage(m.settings))
            .then((o) => send({ type: 'reloaded', id: m.id, ok: o.ok, ...(o.error !== undefined ? { error: o.error } : {}) }));
          break;
        case 'health':
          if (health) health.verdict = m.verdict;
          break;
        case 'stop':
          void stop(m.drainMs);
          break;
      }
    });
    send({ type: 'ready' });
  } catch (e) {
    server?.closeConnections();
    await hsm?.close().catch(() => undefined);
    await log.close();
    throw e;
  }
}

run().catch((e: unknown) => {
  send({ type: 'failed', error: e instanceof Error ? e.message : String(e) });
  port.close();
});
