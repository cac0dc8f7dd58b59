/**
 * The OpenAPI document, built from the route schemas without loading a model (the routes are registered
 * against inert dependencies that are never called). `npm run openapi` writes it to openapi/openapi.json;
 * a test fails when that file and the code disagree.
 */
import { writeFileSync } from 'node:fs';
import { createApp, openapiDocument } from './app.ts';
import type { JobRunner } from './jobs.ts';
import type { PromptEncoder } from '../engine/tokenizer-thread.ts';
import type { PluginStore } from '../plugins/store.ts';
import type { EngineHost } from '../runtime/host.ts';
import type { JobManager } from '../stethoscope/jobs.ts';
import type { CheckpointRegistry } from '../stethoscope/checkpoints.ts';
import type { ServingContext } from './routes/openai/index.ts';
import { Metrics } from './metrics.ts';

export function buildOpenApiDocument(): unknown {
  const never = () => {
    throw new Error('not serving: this app only describes the API');
  };
  const app = createApp({
    serving: { runner: {} as JobRunner, tokenizer: never, prompts: {} as PromptEncoder, vocabSize: never, maxContext: never, resolveView: never, models: never, reasoningFormat: 'auto' },
    plugins: { store: {} as PluginStore, backbone: never, backboneName: 'backbone', maxPluginBytes: 1, modelRoots: [] },
    stethoscope: {
      host: {} as EngineHost,
      dataDir: '',
      resolveView: never,
      jobs: {} as JobManager,
      modelRoots: [],
      pluginFile: never,
      backboneDir: '',
      serving: {} as ServingContext,
      backboneName: 'backbone',
      plugins: { store: {} as PluginStore },
      checkpoints: {} as CheckpointRegistry,
      trainedView: never,
    },
    auth: { apiKeys: [], adminKeys: [] },
    metrics: new Metrics({ modelName: never, stats: never, pluginsInUse: never, maxRunning: 1, maxPlugins: 0 }),
    maxBodyBytes: 1,
    state: never,
    version: '0',
  });
  return openapiDocument(app);
}

export const OPENAPI_PATH = new URL('../../openapi/openapi.json', import.meta.url);

if (process.argv[1]?.endsWith('openapi.ts')) {
  writeFileSync(OPENAPI_PATH, JSON.stringify(buildOpenApiDocument(), null, 2) + '\n');
  console.log(`wrote ${OPENAPI_PATH.pathname}`);
}
