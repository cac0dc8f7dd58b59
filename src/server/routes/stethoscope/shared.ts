/**
 * What the stethoscope endpoints share: their dependencies, the level thresholds and scorer fields, the job
 * resource, and the probe that runs prompts through an intact and an altered view.
 */
import { z } from '@hono/zod-openapi';
import type { EngineHost } from '../../../runtime/host.ts';
import type { ViewSpec } from '../../../runtime/protocol.ts';
import type { JobManager, JobRecord } from '../../../stethoscope/jobs.ts';
import { DEFAULT_THRESHOLDS, ThresholdsSpec, type LevelThresholds } from '../../../stethoscope/levels.ts';
import type { ServingContext } from '../openai/index.ts';
import type { PluginStore } from '../../../plugins/store.ts';
import type { CheckpointRegistry } from '../../../stethoscope/checkpoints.ts';
import { compareViews, type ProbePrompt, SCORERS, type ScorerChoice } from '../../../stethoscope/probe.ts';
import type { EngineClient } from '../../../stethoscope/engine-client.ts';
import { serverClient } from '../../engine-client.ts';
import { asBadRequest } from '../../errors.ts';

export interface StethoscopeDeps {
  host: EngineHost;
  dataDir: string;
  resolveView: (model: string, stethoscope?: { merge?: unknown; destroy?: unknown }) => ViewSpec;
  jobs: JobManager;
  modelRoots: string[];
  /** A plugin's file by id (for a delta of backbone vs plugin). */
  pluginFile: (id: string) => string | undefined;
  backboneDir: string;
  serving: ServingContext;
  backboneName: string;
  plugins: { store: PluginStore };
  checkpoints: CheckpointRegistry;
  /** The view of a Freeze run's output: its plugin file laid over the backbone, or every module of its checkpoint merged in. */
  trainedView: (out: string) => ViewSpec;
}

/** The engine, as the stethoscopes see it, for one request or job (`wait`: a job waits for queue room, a request gets a 429). */
export function engineClient(deps: StethoscopeDeps, signal: AbortSignal, opts: { wait: boolean }): EngineClient<ViewSpec> {
  return serverClient({ runner: deps.serving.runner, host: deps.host }, signal, opts);
}

export const Thresholds = ThresholdsSpec.describe(`Level thresholds (defaults ${JSON.stringify(DEFAULT_THRESHOLDS)}).`);

export const Scorer = z
  .enum(SCORERS)
  .default('backbone')
  .openapi({ description: 'Which model scores NLL and PMI for the levels: the intact backbone (default) or the view that produced the output.' });

/** The metrics a level verdict is read from (stethoscope/levels.ts, LevelMetrics). */
export const LevelMetricsSchema = z
  .object({
    tokens: z.number().int(),
    chars: z.number().int(),
    repetition: z.number(),
    nll: z.number().nullable(),
    pmi: z.number().nullable(),
    matched: z.boolean().nullable().openapi({ description: 'null when no expected answer was given.' }),
    extracted: z.string().nullable(),
  })
  .openapi('LevelMetrics');

const verdict = { level: z.enum(['I', 'II', 'III', 'IV']), reason: z.string(), metrics: LevelMetricsSchema };
export const VerdictSchema = z.object(verdict).openapi('LevelVerdict');

/** One greedy output of a probe with its verdict. */
export const JudgedOutputSchema = z.object({ text: z.string(), finish_reason: z.string(), ...verdict }).openapi('JudgedOutput');

/** A probe's results: per prompt, the intact view's output and the altered view's under `label`. */
export const probeResultsSchema = (label: 'merged' | 'destroyed') => z.array(z.object({ index: z.number().int(), intact: JudgedOutputSchema, [label]: JudgedOutputSchema }));

export const JobSchema = z
  .object({
    id: z.string(),
    object: z.literal('stethoscope.job'),
    kind: z.string(),
    status: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted']),
    created: z.number().int(),
    started: z.number().int().nullable(),
    finished: z.number().int().nullable(),
    progress: z.object({ done: z.number().int(), total: z.number().int(), message: z.string() }),
    params: z.any(),
    result: z.any(),
    error: z.string().nullable(),
    files: z.array(z.string()),
  })
  .openapi('Job');

/** A job record with the files it has written so far. */
export const jobView = (deps: StethoscopeDeps, j: JobRecord) => ({ ...j, files: deps.jobs.files(j.id) });

/** Each prompt through the intact and the altered view, both outputs judged with levels I-IV (a probe's 400s named). */
export async function compare(
  deps: StethoscopeDeps,
  intact: ViewSpec,
  altered: ViewSpec,
  prompts: ProbePrompt[],
  opts: { maxTokens: number; thresholds: LevelThresholds; scorer: ScorerChoice; label: string },
  signal: AbortSignal,
) {
  try {
    return await compareViews(engineClient(deps, signal, { wait: false }), deps.serving.tokenizer()!, { intact, altered }, prompts, opts);
  } catch (e) {
    throw asBadRequest(e);
  }
}
