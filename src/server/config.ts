/**
 * Server settings from flags and environment variables (flags win). Every setting is listed in
 * docs/configuration.md with its variable.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { REASONING_FORMATS } from '../engine/prompt.ts';

const csv = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : []);

export const ServerConfig = z.object({
  host: z.string().min(1),
  port: z.number().int().min(0).max(65535),
  model: z.string().optional(),
  servedModelName: z.string().regex(/^[A-Za-z0-9._\-/]+$/, 'letters, digits, . _ - / only').optional(),
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
  modelRoots: z.array(z.string().min(1)),
  shutdownGraceSeconds: z.number().min(0),
  device: z.enum(['cpu', 'cuda']),
  quantize: z.enum(['none', 'int4']),
  reasoningFormat: z.enum(REASONING_FORMATS),
  corsOrigins: z.array(z.string().regex(/^(\*|https?:\/\/[^/\s]+)$/, 'an origin is * or scheme://host[:port]')),
});
export type ServerConfig = z.infer<typeof ServerConfig>;

/** Settings whose flag or variable is not the field's name in kebab / upper snake case. */
const SETTING_NAMES: Record<string, string> = {
  apiKeys: '--api-key / SFN_API_KEYS',
  adminKeys: '--admin-key / SFN_ADMIN_KEYS',
  pluginCacheBytes: '--plugin-cache-mb / SFN_PLUGIN_CACHE_MB',
  maxPluginBytes: '--max-plugin-mb / SFN_MAX_PLUGIN_MB',
  modelRoots: '--model-root / SFN_MODEL_ROOTS',
  shutdownGraceSeconds: '--shutdown-grace-s / SFN_SHUTDOWN_GRACE_S',
  corsOrigins: '--cors-origin / SFN_CORS_ORIGINS',
};

const num = (v: string | undefined) => (v === undefined || v === '' ? undefined : Number(v));

/** Parses `sfn serve` flags over the environment. Throws with the offending setting named. */
export function parseServerConfig(args: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      model: { type: 'string' },
      'served-model-name': { type: 'string' },
      'api-key': { type: 'string', multiple: true },
      'admin-key': { type: 'string', multiple: true },
      threads: { type: 'string' },
      'max-batch': { type: 'string' },
      'max-running': { type: 'string' },
      'max-waiting': { type: 'string' },
      'max-context': { type: 'string' },
      'prefill-chunk': { type: 'string' },
      'max-body-bytes': { type: 'string' },
      'data-dir': { type: 'string' },
      'plugin-cache-mb': { type: 'string' },
      'max-plugin-mb': { type: 'string' },
      'model-root': { type: 'string', multiple: true },
      'shutdown-grace-s': { type: 'string' },
      device: { type: 'string' },
      quantize: { type: 'string' },
      'reasoning-format': { type: 'string' },
      'cors-origin': { type: 'string', multiple: true },
    },
  });
  const raw = {
    host: values.host ?? env.SFN_HOST ?? '127.0.0.1',
    port: num(values.port ?? env.SFN_PORT) ?? 8000,
    model: values.model ?? (env.SFN_MODEL || undefined),
    servedModelName: values['served-model-name'] ?? (env.SFN_SERVED_MODEL_NAME || undefined),
    apiKeys: values['api-key'] ?? csv(env.SFN_API_KEYS),
    adminKeys: values['admin-key'] ?? csv(env.SFN_ADMIN_KEYS),
    threads: num(values.threads ?? env.SFN_THREADS),
    maxBatch: num(values['max-batch'] ?? env.SFN_MAX_BATCH) ?? 8,
    maxRunning: num(values['max-running'] ?? env.SFN_MAX_RUNNING) ?? 16,
    maxWaiting: num(values['max-waiting'] ?? env.SFN_MAX_WAITING) ?? 64,
    maxContext: num(values['max-context'] ?? env.SFN_MAX_CONTEXT) ?? 4096,
    prefillChunk: num(values['prefill-chunk'] ?? env.SFN_PREFILL_CHUNK) ?? 512,
    maxBodyBytes: num(values['max-body-bytes'] ?? env.SFN_MAX_BODY_BYTES) ?? 4 * 1024 * 1024,
    dataDir: values['data-dir'] ?? env.SFN_DATA_DIR ?? './data',
    pluginCacheBytes: (num(values['plugin-cache-mb'] ?? env.SFN_PLUGIN_CACHE_MB) ?? 1024) * 1024 * 1024,
    maxPluginBytes: (num(values['max-plugin-mb'] ?? env.SFN_MAX_PLUGIN_MB) ?? 4096) * 1024 * 1024,
    modelRoots: values['model-root'] ?? csv(env.SFN_MODEL_ROOTS),
    shutdownGraceSeconds: num(values['shutdown-grace-s'] ?? env.SFN_SHUTDOWN_GRACE_S) ?? 30,
    device: values.device ?? (env.SFN_DEVICE || 'cpu'),
    quantize: values.quantize ?? (env.SFN_QUANTIZE || 'none'),
    reasoningFormat: values['reasoning-format'] ?? (env.SFN_REASONING_FORMAT || 'auto'),
    corsOrigins: values['cors-origin'] ?? csv(env.SFN_CORS_ORIGINS),
  };
  const parsed = ServerConfig.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    // Name the setting as the user wrote it (flag and variable), not by its internal field.
    const field = String(i.path[0]);
    const flag = field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    const named = SETTING_NAMES[field] ?? `--${flag} / SFN_${flag.replace(/-/g, '_').toUpperCase()}`;
    throw new Error(`invalid setting ${named}${i.path.length > 1 ? ` (item ${Number(i.path[1]) + 1})` : ''}: ${i.message}`);
  }
  return parsed.data;
}
