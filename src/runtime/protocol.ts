/** Messages between the HTTP thread (the host) and the engine's worker thread. */
import type { ModelSpec } from '../model/config.ts';
import type { FloatDtype } from '../model/dtype.ts';
import type { OverlaySpec, OverlayStats } from '../views/overlays.ts';
import type { Device, EngineOptions, ServingFrom } from '../engine/session.ts';
import type { Finish, GeneratedToken, JobParams } from '../engine/generate.ts';
import type { PromptLogprob, SchedulerOptions, SchedulerStats } from '../engine/scheduler.ts';

export interface WorkerInit {
  modelDir: string;
  engine: EngineOptions;
  /** maxContext is capped at the model's max_position_embeddings once the config is read. */
  scheduler: SchedulerOptions;
  overlayCacheBytes: number;
}

/** The context limit actually served: the configured one, capped by the model. */
export function servedContext(configured: number, spec: ModelSpec): number {
  return Math.min(configured, spec.maxPositionEmbeddings);
}

/** What a request runs on: the backbone plus overlays, described so that the worker can load them. */
export interface ViewSpec {
  overlays: OverlaySpec[];
  /** What the caller asked for, echoed in responses (`sfn` field) so an output can be traced to its spec. */
  trace?: ViewTrace;
}

export interface ViewTrace {
  /** The backbone's fingerprint when no overlay applies, else a hash of it and the overlays' ids. */
  view: string;
  overlays: ({ type: 'plugin'; id: string; sha256: string } | { type: 'merge'; spec: unknown } | { type: 'destroy'; spec: unknown })[];
}

export type { JobParams } from '../engine/generate.ts';

export type HostToWorker =
  | { type: 'submit'; id: string; promptIds: number[]; params: JobParams; view: ViewSpec; promptLogprobs?: number; promptGroup?: string }
  | { type: 'cancel'; id: string }
  /** Shutdown: cancel everything, let the run in progress end, release the sessions, exit the thread. */
  | { type: 'stop' }
  | { type: 'stats'; reqId: number }
  | { type: 'export'; reqId: number; view: ViewSpec; out: string; dtype: FloatDtype; shardBytes?: number }
  | { type: 'kl'; reqId: number; ids: number[]; base: ViewSpec; views: ViewSpec[] };

export interface WorkerStats extends SchedulerStats {
  overlays: OverlayStats;
}

export type WorkerToHost =
  | { type: 'ready'; spec: ModelSpec; fingerprint: string; device: Device; servingFrom: ServingFrom; pluggableMaxAbs: Record<string, number> }
  | { type: 'fatal'; message: string }
  | { type: 'scheduled'; id: string }
  | { type: 'token'; id: string; token: GeneratedToken }
  | { type: 'prompt_logprobs'; id: string; logprobs: PromptLogprob[] }
  | { type: 'done'; id: string; finish: Finish }
  | { type: 'error'; id: string; message: string; code?: string }
  | { type: 'rejected'; id: string; reason: 'queue_full' | 'invalid'; message: string }
  | { type: 'stats'; reqId: number; stats: WorkerStats }
  | { type: 'exported'; reqId: number; tensors?: number; error?: string }
  | { type: 'kl'; reqId: number; kl?: number[]; error?: string };
