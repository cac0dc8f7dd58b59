/**
 * Server settings from flags and environment variables (flags win), declared once in SERVE: the reference in
 * docs/configuration.md is generated from it (`npm run docs:options`).
 */
import { z } from 'zod';
import { REASONING_FORMATS } from '../engine/prompt.ts';
import { sessionCacheDir } from '../util/cache-dir.ts';
import { command, optionName, parseOptions } from '../util/options.ts';

export const ServerConfig = z.object({
  host: z.string().min(1),
  port: z.number().int().min(0).max(65535),
  model: z.string().optional(),
  servedModelName: z
    .string()
    .regex(/^[A-Za-z0-9._\-/]+$/, 'letters, digits, . _ - / only')
    .optional(),
  apiKeys: z.array(z.string().min(8, 'API keys need at least 8 characters')),
  adminKeys: z.array(z.string().min(8, 'API keys need at least 8 characters')),
  threads: z.number().int().min(1).optional(),
  maxBatch: z.number().int().min(1).max(64),
  maxRunning: z.number().int().min(1).max(256),
  maxWaiting: z.number().int().min(0),
  maxContext: z.number().int().min(16),
  prefillChunk: z.number().int().min(1),
  maxBodyBytes: z.number().int().min(1024),
  dataDir: z.string().min(1),
  pluginCacheBytes: z.number().int().min(1),
  maxPluginBytes: z.number().int().min(1024),
  maxPluginScale: z.number().min(0),
  maxJobs: z.number().int().min(1),
  quarantineDays: z.number().min(0),
  uploadTimeoutSeconds: z.number().min(1),
  maxQueuedJobs: z.number().int().min(0),
  modelRoots: z.array(z.string().min(1)),
  shutdownGraceSeconds: z.number().min(0),
  device: z.enum(['cpu', 'cuda']),
  quantize: z.enum(['none', 'int4']),
  sessionCache: z.string().min(1),
  sessionCacheBytes: z.number().min(0),
  reasoningFormat: z.enum(REASONING_FORMATS),
  corsOrigins: z.array(z.string().regex(/^(\*|https?:\/\/[^/\s]+)$/, 'an origin is * or scheme://host[:port]')),
});
export type ServerConfig = z.infer<typeof ServerConfig>;

const MiB = 1024 * 1024;

/** `sfn serve`'s options: the one declaration behind parsing, `sfn serve --help` and docs/configuration.md. */
export const SERVE = command({
  name: 'serve',
  summary: 'run the OpenAI-compatible server',
  options: {
    model: { kind: 'string', arg: 'DIR', env: 'SFN_MODEL', defaultHelp: 'the built-in models/stories260K', help: 'HF model directory' },
    'served-model-name': { kind: 'string', arg: 'NAME', env: 'SFN_SERVED_MODEL_NAME', defaultHelp: 'the directory name', help: 'the `model` name clients use' },
    host: { kind: 'string', arg: 'ADDR', env: 'SFN_HOST', default: '127.0.0.1', help: 'listen address (0.0.0.0 in containers)' },
    port: { kind: 'int', env: 'SFN_PORT', default: 8000, help: 'listen port' },
    'api-key': { kind: 'string', arg: 'KEY', env: 'SFN_API_KEYS', repeat: true, help: 'keys that may generate (at least 8 characters)' },
    'admin-key': { kind: 'string', arg: 'KEY', env: 'SFN_ADMIN_KEYS', repeat: true, help: 'keys that may also write and probe (at least 8 characters)' },
    threads: { kind: 'int', env: 'SFN_THREADS', defaultHelp: 'all cores', help: 'onnxruntime intra-op threads' },
    'max-batch': { kind: 'int', env: 'SFN_MAX_BATCH', default: 8, help: 'sequences decoded together per view' },
    'max-running': { kind: 'int', env: 'SFN_MAX_RUNNING', default: 16, help: 'sequences admitted at once' },
    'max-waiting': { kind: 'int', env: 'SFN_MAX_WAITING', default: 64, help: 'queued sequences; past it, 429' },
    'max-context': { kind: 'int', env: 'SFN_MAX_CONTEXT', default: 4096, help: 'prompt + completion tokens (capped by max_position_embeddings)' },
    'prefill-chunk': { kind: 'int', env: 'SFN_PREFILL_CHUNK', default: 512, help: 'prompt tokens per prefill run (runs alternate with decode steps)' },
    'max-body-bytes': { kind: 'int', env: 'SFN_MAX_BODY_BYTES', default: 4 * MiB, defaultHelp: '4 MiB', help: 'JSON body limit (413 past it)' },
    'data-dir': { kind: 'string', arg: 'DIR', env: 'SFN_DATA_DIR', default: './data', help: 'plugin store and job results' },
    'plugin-cache-mb': { kind: 'number', env: 'SFN_PLUGIN_CACHE_MB', default: 1024, help: 'MiB of plugin tensors kept loaded' },
    'max-plugin-mb': { kind: 'number', env: 'SFN_MAX_PLUGIN_MB', default: 4096, help: 'largest plugin upload (413 past it)' },
    'max-plugin-scale': {
      kind: 'number',
      env: 'SFN_MAX_PLUGIN_SCALE',
      default: 100,
      help: "a plugin tensor may reach this many times the largest |value| of the backbone's tensor it replaces (400 past it; 0: no bound)",
    },
    'quarantine-days': { kind: 'number', env: 'SFN_QUARANTINE_DAYS', default: 7, help: "how long the store's quarantine/ keeps what a start-up scan set aside" },
    'upload-timeout-s': { kind: 'number', env: 'SFN_UPLOAD_TIMEOUT_S', default: 3600, help: 'a request (a plugin upload) must arrive in full within this many seconds; past it, 408' },
    'max-jobs': { kind: 'int', env: 'SFN_MAX_JOBS', default: 2, help: 'background jobs (evals, tables, sweeps, Freeze runs, deltas) running at once' },
    'max-queued-jobs': { kind: 'int', env: 'SFN_MAX_QUEUED_JOBS', default: 32, help: 'background jobs waiting to start; past it, 429' },
    'model-root': { kind: 'string', arg: 'DIR', env: 'SFN_MODEL_ROOTS', repeat: true, help: 'directories that merges, deltas, extraction and the freeze plan may read' },
    'cors-origin': { kind: 'string', arg: 'ORIGIN', env: 'SFN_CORS_ORIGINS', repeat: true, help: 'origins browsers may call from (https://app.example.com, or *); none: no CORS headers' },
    'reasoning-format': {
      kind: 'string',
      choices: REASONING_FORMATS,
      env: 'SFN_REASONING_FORMAT',
      default: 'auto',
      help: "reasoning mode's format when a request does not name one (api.md#reasoning-mode)",
    },
    'shutdown-grace-s': { kind: 'number', env: 'SFN_SHUTDOWN_GRACE_S', default: 30, help: 'on SIGTERM, how long requests in flight may finish' },
    device: { kind: 'string', choices: ['cpu', 'cuda'], env: 'SFN_DEVICE', default: 'cpu', help: 'onnxruntime execution provider; cuda falls back to the CPU with a warning when it cannot start' },
    quantize: {
      kind: 'string',
      choices: ['none', 'int4'],
      env: 'SFN_QUANTIZE',
      default: 'none',
      help: "int4: the frozen linear weights (q/k/v, gate/up/down) of the serving session, and its copy of the backbone's head, as block-wise int4; swappable weights stay fp32, so plugins and o_proj/norm/head merges swap exactly as before",
    },
    'session-cache': {
      kind: 'string',
      arg: 'DIR',
      env: 'SFN_SESSION_CACHE',
      defaultHelp: '$SFN_CACHE_DIR/sessions, else ~/.cache/sfn/sessions',
      help: "where onnxruntime's optimised serving session (weights prepacked) is kept per backbone, CPU and version, so that later starts map it instead of rebuilding it; the first start writes it (about twice the fp32 weights). off: never",
    },
    'session-cache-gb': {
      kind: 'number',
      env: 'SFN_SESSION_CACHE_GB',
      default: 24,
      help: 'size budget of the session cache; least recently used entries past it are removed (never the one just written)',
    },
  },
});

/** Each setting's option, for naming it in errors as the user wrote it. */
const OPTION_OF: Record<keyof ServerConfig, keyof typeof SERVE.options> = {
  host: 'host',
  port: 'port',
  model: 'model',
  servedModelName: 'served-model-name',
  apiKeys: 'api-key',
  adminKeys: 'admin-key',
  threads: 'threads',
  maxBatch: 'max-batch',
  maxRunning: 'max-running',
  maxWaiting: 'max-waiting',
  maxContext: 'max-context',
  prefillChunk: 'prefill-chunk',
  maxBodyBytes: 'max-body-bytes',
  dataDir: 'data-dir',
  pluginCacheBytes: 'plugin-cache-mb',
  maxPluginBytes: 'max-plugin-mb',
  maxPluginScale: 'max-plugin-scale',
  maxJobs: 'max-jobs',
  quarantineDays: 'quarantine-days',
  uploadTimeoutSeconds: 'upload-timeout-s',
  maxQueuedJobs: 'max-queued-jobs',
  modelRoots: 'model-root',
  shutdownGraceSeconds: 'shutdown-grace-s',
  device: 'device',
  quantize: 'quantize',
  sessionCache: 'session-cache',
  sessionCacheBytes: 'session-cache-gb',
  reasoningFormat: 'reasoning-format',
  corsOrigins: 'cors-origin',
};

/** Parses `sfn serve` flags over the environment. Throws with the offending setting named. */
export function parseServerConfig(args: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const { values: v } = parseOptions(SERVE, args, env);
  const raw = {
    host: v.host,
    port: v.port,
    model: v.model,
    servedModelName: v['served-model-name'],
    apiKeys: v['api-key'],
    adminKeys: v['admin-key'],
    threads: v.threads,
    maxBatch: v['max-batch'],
    maxRunning: v['max-running'],
    maxWaiting: v['max-waiting'],
    maxContext: v['max-context'],
    prefillChunk: v['prefill-chunk'],
    maxBodyBytes: v['max-body-bytes'],
    dataDir: v['data-dir'],
    pluginCacheBytes: v['plugin-cache-mb'] * MiB,
    maxPluginBytes: v['max-plugin-mb'] * MiB,
    maxPluginScale: v['max-plugin-scale'],
    maxJobs: v['max-jobs'],
    quarantineDays: v['quarantine-days'],
    uploadTimeoutSeconds: v['upload-timeout-s'],
    maxQueuedJobs: v['max-queued-jobs'],
    modelRoots: v['model-root'],
    shutdownGraceSeconds: v['shutdown-grace-s'],
    device: v.device,
    quantize: v.quantize,
    sessionCache: v['session-cache'] ?? sessionCacheDir(env),
    sessionCacheBytes: v['session-cache-gb'] * 1024 ** 3,
    reasoningFormat: v['reasoning-format'],
    corsOrigins: v['cors-origin'],
  };
  const parsed = ServerConfig.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    const flag = OPTION_OF[i.path[0] as keyof ServerConfig];
    throw new Error(`invalid setting ${optionName(flag, SERVE.options[flag])}${i.path.length > 1 ? ` (item ${Number(i.path[1]) + 1})` : ''}: ${i.message}`);
  }
  return parsed.data;
}
