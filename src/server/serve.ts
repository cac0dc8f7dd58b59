/**
 * `sfn serve`: loads the backbone in a worker thread, serves HTTP at once (/health answers, /ready says
 * "loading" until the weights are in), and shuts down gracefully on SIGTERM: stop accepting, let requests in
 * flight finish (up to the grace period), then exit.
 */
import { serve, type ServerType } from '@hono/node-server';
import { basename, resolve as resolvePath } from 'node:path';
import { realpathSync, statSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { checkpointFiles } from '../model/checkpoint.ts';
import { MODULE_KINDS } from '../model/names.ts';
import { PLUGIN_SLOTS } from '../engine/layout.ts';
import { BUILTIN_NAME, resolveModelDir } from '../model/builtin.ts';
import { EngineHost } from '../runtime/host.ts';
import { sessionCacheSetting } from '../engine/session-cache.ts';
import type { ServingFrom } from '../engine/session.ts';
import { servedContext } from '../runtime/protocol.ts';
import { ModelTokenizer } from '../engine/tokenizer.ts';
import { PromptEncoder } from '../engine/tokenizer-thread.ts';
import { authEnabled } from './auth.ts';
import { createApp } from './app.ts';
import { parseServerConfig, type ServerConfig } from './config.ts';
import { ApiError, badRequest, modelNotFound, setErrorRoots } from './errors.ts';
import { findUnderRoots } from './roots.ts';
import { join } from 'node:path';
import { JobManager } from '../stethoscope/jobs.ts';
import { trainingThreadsEnded } from '../stethoscope/freeze-worker.ts';
import { CheckpointRegistry } from '../stethoscope/checkpoints.ts';
import type { DonorRef } from '../views/build.ts';
import { resolveDestroy, resolveMerge } from '../views/resolve.ts';
import { DestroySpec, MergeSpec, parseSpec, SpecError } from '../views/spec.ts';
import type { OverlaySpec } from '../views/overlays.ts';
import type { ViewSpec, ViewTrace } from '../runtime/protocol.ts';
import { viewFingerprint } from '../engine/view.ts';
import { JobRunner } from './jobs.ts';
import { Metrics } from './metrics.ts';
import type { ModelEntry, ServingContext } from './routes/openai/index.ts';
import { PluginStore } from '../plugins/store.ts';

export interface RunningServer {
  url: string;
  host: EngineHost;
  modelName: string;
  /** Stops accepting, waits for requests in flight (up to the grace period), stops the engine. */
  close: () => Promise<void>;
}

/** A request Node refuses before the app sees it (timed out, malformed), answered in OpenAI's error shape. */
function clientError(err: NodeJS.ErrnoException, socket: Duplex, timeoutSeconds: number): void {
  if (!socket.writable || (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) return void socket.destroy();
  const [status, text, body] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'Request Timeout', new ApiError(408, `The request was not received within ${timeoutSeconds} s (--upload-timeout-s).`, 'invalid_request_error', 'request_timeout').body()]
      : [400, 'Bad Request', badRequest(`Malformed HTTP request (${err.code ?? err.message}).`).body()];
  const json = JSON.stringify(body);
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\nConnection: close\r\n\r\n${json}`);
}

const realpathOr = (d: string) => {
  try {
    return realpathSync(d);
  } catch {
    return resolvePath(d);
  }
};

/** How the start-up log line tells where the serving session came from. */
const SERVING_FROM: Record<ServingFrom, string> = {
  cache: 'optimised session mapped from the session cache',
  cached: 'optimised session built and written to the session cache for later starts',
  built: 'optimised session built (not cached)',
};

export async function startServer(config: ServerConfig, log: (s: string) => void = (s) => console.log(s)): Promise<RunningServer> {
  const builtin = !config.model;
  const modelDir = resolveModelDir(config.model, log);
  const modelName = config.servedModelName ?? (builtin ? BUILTIN_NAME : basename(modelDir.replace(/\/+$/, '')));
  const host = new EngineHost({
    modelDir,
    engine: { threads: config.threads, device: config.device, quantize: config.quantize, sessionCache: sessionCacheSetting(config.sessionCache, config.sessionCacheBytes) },
    scheduler: { maxBatch: config.maxBatch, maxRunning: config.maxRunning, maxWaiting: config.maxWaiting, prefillChunk: config.prefillChunk, maxContext: config.maxContext },
    overlayCacheBytes: config.pluginCacheBytes,
  });
  const tokenizer = ModelTokenizer.fromDir(modelDir);
  // Computed now (a walk over the vocabulary, ~35 ms for Qwen's), not inside the first large request.
  void tokenizer.maxTokenBytes;
  const prompts = new PromptEncoder(tokenizer, modelDir);
  // Errors name files relative to the model roots and the data dir (as requests name them), never absolutely.
  setErrorRoots([...config.modelRoots, config.dataDir].flatMap((d) => [resolvePath(d), realpathOr(d)]));
  const store = new PluginStore(config.dataDir, log, config.quarantineDays * 24 * 3600_000);
  const scan = await store.scan();
  log(`sfn: plugin store at ${config.dataDir}: ${scan.loaded} plugin(s)${scan.quarantined.length ? `, ${scan.quarantined.length} entr(ies) quarantined` : ''}`);
  const checkpoints = new CheckpointRegistry(config.dataDir, log);
  store.reserved = (id) => (checkpoints.get(id) ? 'a registered checkpoint' : null);
  const jobs = new JobManager(join(config.dataDir, 'jobs'), { concurrency: config.maxJobs, maxQueued: config.maxQueuedJobs });
  /** A merge donor: a plugin id, a registered checkpoint name, else a checkpoint directory under the model roots. */
  const donor = (from: string, param: string): DonorRef => {
    const m = store.get(from);
    if (m) return { kind: 'file', path: store.blobPath(m.sha256), id: m.sha256 };
    const reg = checkpoints.get(from);
    if (reg) return { kind: 'dir', path: reg.path, id: `dir:${reg.path}:${reg.registered}` };
    const dir = findUnderRoots(config.modelRoots, from);
    if (dir) {
      // The loader's own check, now: a directory without weights is this request's 400, not a worker's error.
      try {
        checkpointFiles(dir);
      } catch (e) {
        throw badRequest(`${param}: "${from}" is not a checkpoint (${(e as Error).message})`, param, 'not_a_checkpoint');
      }
      return { kind: 'dir', path: dir, id: `dir:${dir}` };
    }
    throw badRequest(`${param}: "${from}" is neither a plugin, a registered checkpoint, nor a checkpoint directory under the model roots`, param);
  };
  const created = Math.floor(Date.now() / 1000);
  const metrics = new Metrics({
    modelName: () => modelName,
    // A scrape while the engine restarts reads zeros rather than failing.
    stats: async () => (host.state === 'ready' ? host.stats().catch(() => null) : null),
    // By the names requests used: plugins with identical bytes share a blob, not a place in this list.
    pluginsInUse: () => runner.pluginsInUse(),
    maxRunning: config.maxRunning,
    // Distinct plugins one decode step carries: the picker's adapter affinity must not count on more.
    maxPlugins: PLUGIN_SLOTS,
  });
  const runner = new JobRunner(host, metrics, () => modelName, { maxRunning: config.maxRunning, maxWaiting: config.maxWaiting });
  const resolveView = (model: string, stethoscope: { merge?: unknown; destroy?: unknown } = {}): ViewSpec => {
    const overlays: OverlaySpec[] = [];
    const trace: ViewTrace['overlays'] = [];
    if (model !== modelName) {
      const id = model.startsWith(`${modelName}:`) ? model.slice(modelName.length + 1) : '';
      const m = id ? store.get(id) : undefined;
      if (!m) throw modelNotFound(model);
      overlays.push({ type: 'file', id: m.sha256, path: store.blobPath(m.sha256) });
      trace.push({ type: 'plugin', id, sha256: m.sha256 });
    }
    try {
      if (stethoscope.merge != null) {
        overlays.push(resolveMerge(host.spec!, stethoscope.merge, donor));
        trace.push({ type: 'merge', spec: parseSpec(MergeSpec, stethoscope.merge, 'merge') });
      }
      if (stethoscope.destroy != null) {
        overlays.push(resolveDestroy(host.spec!, stethoscope.destroy));
        trace.push({ type: 'destroy', spec: parseSpec(DestroySpec, stethoscope.destroy, 'destroy') });
      }
    } catch (e) {
      if (e instanceof SpecError) throw badRequest(e.message, e.param);
      throw e;
    }
    return { overlays, trace: { view: viewFingerprint(host.fingerprint ?? '', overlays), overlays: trace } };
  };
  const serving: ServingContext = {
    runner,
    tokenizer: () => (host.state === 'ready' ? tokenizer : null),
    prompts,
    vocabSize: () => host.spec!.vocabSize,
    maxContext: () => servedContext(config.maxContext, host.spec!),
    resolveView,
    reasoningFormat: config.reasoningFormat,
    models: (): ModelEntry[] => [{ id: modelName, created, parent: null }, ...store.list().map((m) => ({ id: `${modelName}:${m.id}`, created: m.created, parent: modelName }))],
  };
  const app = createApp({
    stethoscope: {
      host,
      dataDir: config.dataDir,
      resolveView,
      jobs,
      modelRoots: config.modelRoots,
      pluginFile: (id) => {
        const m = store.get(id);
        return m && store.blobPath(m.sha256);
      },
      backboneDir: modelDir,
      serving,
      backboneName: modelName,
      plugins: { store },
      checkpoints,
      trainedView: (out: string): ViewSpec => {
        const id = `trained:${out}:${statSync(out).mtimeMs}`;
        if (out.endsWith('.safetensors')) {
          const plugin: OverlaySpec = { type: 'file', id, path: out };
          return { overlays: [plugin], trace: { view: viewFingerprint(host.fingerprint!, [plugin]), overlays: [] } };
        }
        const all = MODULE_KINDS.filter((k) => !(host.spec!.tieWordEmbeddings && k === 'lm_head'));
        const merge = [{ modules: [...all], layers: 'all', from: out, alpha: 1 }];
        const overlay = resolveMerge(host.spec!, merge, () => ({ kind: 'dir', path: out, id }));
        return { overlays: [overlay], trace: { view: viewFingerprint(host.fingerprint!, [overlay]), overlays: [{ type: 'merge', spec: merge }] } };
      },
    },
    serving,
    plugins: {
      store,
      backbone: () => (host.state === 'ready' ? { spec: host.spec!, fingerprint: host.fingerprint!, maxAbs: host.pluggableMaxAbs, maxScale: config.maxPluginScale } : null),
      backboneName: modelName,
      maxPluginBytes: config.maxPluginBytes,
      modelRoots: config.modelRoots,
    },
    auth: { apiKeys: config.apiKeys, adminKeys: config.adminKeys },
    metrics,
    maxBodyBytes: config.maxBodyBytes,
    corsOrigins: config.corsOrigins,
    state: () => host.state,
    version: '0.1.0',
  });
  if (!authEnabled(config)) log('sfn: WARNING: no API keys configured (--api-key / SFN_API_KEYS); the server is open to anyone who can reach it.');

  const server: ServerType = await new Promise((resolve) => {
    // Node cuts a request not received in full within requestTimeout (300 s by default: a 4 GB upload would need
    // 13.6 MB/s); it is a setting, and the cut is answered with an OpenAI-style 408 rather than a bare one.
    const s = serve(
      {
        fetch: app.fetch,
        hostname: config.host,
        port: config.port,
        serverOptions: { requestTimeout: config.uploadTimeoutSeconds * 1000, connectionsCheckingInterval: Math.min(30_000, Math.max(500, config.uploadTimeoutSeconds * 100)) },
      },
      () => resolve(s),
    );
    s.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => clientError(err, socket, config.uploadTimeoutSeconds));
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  log(`sfn: listening on ${url}, serving "${modelName}" from ${modelDir} (loading...)`);
  host.ready.then(
    () =>
      log(
        `sfn: model loaded; ready on ${host.device}${config.quantize === 'int4' ? ', frozen weights int4' : ''} (${host.spec!.numLayers} layers, hidden ${host.spec!.hiddenSize}, context ${servedContext(config.maxContext, host.spec!)}); ${SERVING_FROM[host.servingFrom!]}`,
      ),
    (e) => log(`sfn: ERROR: the model failed to load: ${(e as Error).message}`),
  );

  let closing: Promise<void> | null = null;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const close = () =>
    (closing ??= (async () => {
      // Stop admitting; requests, uploads and jobs in flight get the grace period, then are cut (jobs recorded
      // as interrupted) and the engine's thread ends after its current run: exit by grace + about 5 s.
      const deadline = Date.now() + config.shutdownGraceSeconds * 1000;
      let drained = false;
      const http = new Promise<void>((r) => server.close(() => r())).then(() => (drained = true));
      (server as { closeIdleConnections?: () => void }).closeIdleConnections?.();
      while ((!drained || host.inFlight > 0 || jobs.active > 0) && Date.now() < deadline) await sleep(50);
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
      await jobs.shutdown(4000);
      await host.close(Math.max(1000, deadline + 5000 - Date.now()));
      // A training step cannot be cut (onnxruntime would abort the process): its thread ends after it.
      await trainingThreadsEnded();
      await prompts.close();
      await Promise.race([http, sleep(500)]);
    })());
  return { url, host, modelName, close };
}

export async function serveCommand(args: string[]): Promise<void> {
  const config = parseServerConfig(args);
  const running = await startServer(config);
  const stop = (signal: string) => {
    console.log(`sfn: ${signal}: draining ${running.host.inFlight} request(s) in flight, then exiting`);
    running.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  await new Promise(() => {});
}
