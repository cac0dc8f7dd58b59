/**
 * The stethoscopes' admin endpoints that act on whole views. `POST /v1/stethoscope/export` writes a view
 * (backbone or plugin, plus merge / destroy) as a full HF checkpoint directory under the data directory.
 */
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import type { EngineHost } from '../../runtime/host.ts';
import type { ViewSpec } from '../../runtime/protocol.ts';
import { checkPluginId } from '../../plugins/store.ts';
import { rmSync, statSync } from 'node:fs';
import { DestroySpec, MergeSpec } from '../../views/spec.ts';
import { requireKey, type AuthConfig } from '../auth.ts';
import { ApiError, badRequest, notFound, unavailable } from '../errors.ts';
import { requireUnderRoots } from '../roots.ts';
import { checkpointSource, computeDelta, pluginSource, type WeightSource } from '../../stethoscope/delta.ts';
import type { JobManager, JobRecord } from '../../stethoscope/jobs.ts';
import { renderSvg, sweepSpec, writeDeltaOutputs } from '../../stethoscope/plots.ts';
import { DEFAULT_THRESHOLDS, ThresholdsSpec, type LevelThresholds } from '../../stethoscope/levels.ts';
import type { ServingContext } from './openai.ts';
import { PromptError, REASONING_FORMATS, reasoningFormat } from '../../engine/prompt.ts';
import { parseName, PLUGGABLE_KINDS } from '../../model/names.ts';
import { sha256File, type PluginStore } from '../../plugins/store.ts';
import { writeMergePlugin } from '../../stethoscope/merge.ts';
import type { CheckpointRegistry } from '../../stethoscope/checkpoints.ts';
import { commitPluginFile, pluginView } from './plugins.ts';
import { checkItem, EvalDataError, parseJsonl, resultsJsonl, runEval, type EvalItem, type EvalSettings } from '../../stethoscope/eval.ts';
import { compareViews, ProbePrompt, SCORERS, type ScorerChoice } from '../../stethoscope/probe.ts';
import { destructionMarkdown, destructionRows, destructionTable, DestructionTableSpec, mergeMarkdown, mergeRows, mergeTable, MergeTableSpec, writeDestructionTable, writeMergeTable } from '../../stethoscope/tables.ts';
import { serverLab } from '../lab.ts';
import { asBadRequest } from '../errors.ts';
import { errorResponses } from '../schemas.ts';

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

export const Thresholds = ThresholdsSpec.describe(`Level thresholds (defaults ${JSON.stringify(DEFAULT_THRESHOLDS)}).`);

const Scorer = z.enum(SCORERS).default('backbone').openapi({ description: 'Which model scores NLL and PMI for the levels: the intact backbone (default) or the view that produced the output.' });

const EvalBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish(),
    destroy: DestroySpec.nullish(),
    items: z.array(z.unknown()).min(1).max(100000).optional().openapi({ description: 'Items {id, prompt | messages, answer}.' }),
    jsonl: z.string().optional().openapi({ description: 'Or the set as JSONL text, one item per line.' }),
    max_tokens: z.number().int().min(1).max(32768).default(512),
    temperature: z.number().min(0).max(2).default(0),
    seed: z.number().int().min(0).optional(),
    chat: z.boolean().default(true),
    mode: z.enum(['chat', 'reasoning']).default('chat'),
    reasoning_format: z.enum(REASONING_FORMATS).optional().openapi({ description: "Reasoning mode's format (think | s1 | auto); default the server's --reasoning-format." }),
    min_thinking_tokens: z.number().int().min(0).optional(),
    max_thinking_tokens: z.number().int().min(1).optional(),
    wait: z.number().int().min(0).max(64).optional(),
    levels: z.boolean().default(false).openapi({ description: 'Also score each output\'s level I-IV (two scoring passes per item).' }),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    table: MergeTableSpec.optional().describe(
      "Table mode: the paper's Table 1. Rows A, B, M1, M2, M3 (`from`: the fine-tune B) or any `rows` of merge specs, each evaluated on the set: accuracy, average tokens (and levels).",
    ),
    concurrency: z.number().int().min(1).max(64).default(4),
  })
  .openapi('EvalRequest');

const MergeBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`.' }),
    merge: MergeSpec,
    prompts: z.array(ProbePrompt).min(1).max(64).optional(),
    max_tokens: z.number().int().min(1).max(4096).default(64),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    save_as: z.string().optional().openapi({ description: 'Save the merged tensors as this plugin id (pluggable kinds only).' }),
    description: z.string().max(1000).optional(),
    overwrite: z.boolean().default(false),
  })
  .openapi('MergeRequest');

const DestructionBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`: the intact view.' }),
    destroy: DestroySpec.optional(),
    prompts: z.array(ProbePrompt).min(1).max(64).optional(),
    max_tokens: z.number().int().min(1).max(4096).default(64),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    table: DestructionTableSpec.optional().describe(
      "Table mode (a job): the paper's Table 3. For every method x module kind, each prompt's greedy output over the destroyed layers, judged with levels; `remove` is one row.",
    ),
    sweep: z
      .strictObject({
        method: z.enum(['zero', 'reinit', 'remove']),
        modules: z.array(z.string()).default([]).openapi({ description: 'Module kinds (rows of the heatmap); ignored by remove.' }),
        window: z.number().int().min(1).default(4),
        stride: z.number().int().min(1).optional(),
        text: z.string().min(1).optional().openapi({ description: 'Reference text: the damage is measured on its next-token distributions.' }),
        ids: z.array(z.number().int().min(0)).min(2).max(512).optional().openapi({ description: 'Or the reference as token ids.' }),
        seed: z.number().int().min(0).default(0),
      })
      .optional()
      .openapi({ description: 'Sweep mode (a job): every module kind x layer window, damage = mean KL(intact || destroyed).' }),
  })
  .openapi('DestructionRequest');

const DeltaBody = z
  .strictObject({
    a: z.string().optional().openapi({ description: 'Checkpoint A: a directory under the model roots. Default: the served backbone.' }),
    b: z.string().optional().openapi({ description: 'Checkpoint B: a directory under the model roots.' }),
    plugin: z.string().optional().openapi({ description: 'Instead of b: a plugin id, laid over the backbone (A defaults to the backbone).' }),
    bins: z.number().int().min(2).max(1000).default(50),
    every: z.number().int().min(1).default(1).openapi({ description: 'Histogram panels every k layers.' }),
  })
  .openapi('DeltaRequest');

const Job = z
  .object({
    id: z.string(),
    object: z.literal('stethoscope.job'),
    kind: z.string(),
    status: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']),
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

const CONTENT_TYPES: Record<string, string> = { '.json': 'application/json', '.csv': 'text/csv', '.svg': 'image/svg+xml', '.html': 'text/html; charset=utf-8', '.jsonl': 'application/x-ndjson' };

const ExportBody = z
  .strictObject({
    name: z.string().openapi({ description: 'Directory name under <data-dir>/exports/.' }),
    model: z.string().openapi({ description: 'The backbone or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish(),
    destroy: DestroySpec.nullish(),
    dtype: z.enum(['f32', 'bf16', 'f16']).default('f32'),
    overwrite: z.boolean().default(false),
  })
  .openapi('ExportRequest');

export const JobSchema = Job;

export function stethoscopeRoutes(app: OpenAPIHono, deps: StethoscopeDeps, auth: AuthConfig): void {
  for (const p of ['/v1/stethoscope/export', '/v1/stethoscope/delta', '/v1/stethoscope/jobs', '/v1/stethoscope/jobs/*']) app.use(p, requireKey(auth, 'admin'));
  const jobView = (j: JobRecord) => ({ ...j, files: deps.jobs.files(j.id) });

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/delta',
      summary: 'Start a delta report job (admin): per module x layer ||B-A||, relative change histograms, bimodality, charts.',
      request: { body: { content: { 'application/json': { schema: DeltaBody } }, required: true } },
      responses: { 202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}.', content: { 'application/json': { schema: Job } } }, ...errorResponses(400, 401, 403, 404) },
    }),
    (c) => {
      const body = c.req.valid('json');
      if ((body.b === undefined) === (body.plugin === undefined)) throw badRequest('give exactly one of "b" (a checkpoint) and "plugin"', 'b');
      const a = body.a === undefined ? deps.backboneDir : requireUnderRoots(deps.modelRoots, body.a, 'a');
      let open: () => [WeightSource, WeightSource];
      if (body.plugin !== undefined) {
        const file = deps.pluginFile(body.plugin);
        if (!file) throw notFound(`no plugin "${body.plugin}"`, 'plugin_not_found');
        open = () => [checkpointSource(a), pluginSource(a, file)];
      } else {
        const b = requireUnderRoots(deps.modelRoots, body.b!, 'b');
        open = () => [checkpointSource(a), checkpointSource(b)];
      }
      const job = deps.jobs.start('delta', body, async (_job, dir, progress) => {
        const [sa, sb] = open();
        try {
          const report = await computeDelta(sa, sb, { bins: body.bins, onProgress: (d, t, name) => progress(d, t, name) });
          await writeDeltaOutputs(report, dir, body.every);
          return { kinds: report.kinds, modules: report.modules.length };
        } finally {
          sa.close();
          sb.close();
        }
      });
      return c.json(jobView(job), 202);
    },
  );

  app.use('/v1/stethoscope/destruction', requireKey(auth, 'admin'));
  app.use('/v1/stethoscope/eval', requireKey(auth, 'admin'));

  /** Each prompt through the intact and the altered view, both outputs judged with levels I-IV. */
  const compare = async (intact: ViewSpec, altered: ViewSpec, prompts: ProbePrompt[], opts: { maxTokens: number; thresholds: LevelThresholds; scorer: ScorerChoice; label: string }, signal: AbortSignal) => {
    try {
      return await compareViews(serverLab(deps.serving.runner, signal, { wait: false }), deps.serving.tokenizer()!, { intact, altered }, prompts, opts);
    } catch (e) {
      throw asBadRequest(e);
    }
  };

  app.use('/v1/stethoscope/checkpoints', requireKey(auth, 'admin'));
  app.use('/v1/stethoscope/checkpoints/*', requireKey(auth, 'admin'));
  const Ckpt = z.object({ name: z.string(), path: z.string(), registered: z.number().int() }).openapi('Checkpoint');
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/checkpoints',
      summary: 'Register a donor checkpoint by name (admin): a directory under the model roots; merges name it in "from".',
      request: { body: { content: { 'application/json': { schema: z.strictObject({ name: z.string(), path: z.string() }).openapi('CheckpointRequest') } }, required: true } },
      responses: { 201: { description: 'Registered.', content: { 'application/json': { schema: Ckpt } } }, ...errorResponses(400, 401, 403, 409) },
    }),
    (c) => {
      const { name, path } = c.req.valid('json');
      const bad = checkPluginId(name);
      if (bad) throw badRequest(`name: ${bad}`, 'name');
      if (deps.plugins.store.get(name)) throw new ApiError(409, `"${name}" is a plugin id; donor names and plugin ids share "from"`, 'invalid_request_error', 'name_taken', 'name');
      return c.json(deps.checkpoints.register(name, requireUnderRoots(deps.modelRoots, path, 'path')), 201);
    },
  );
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/checkpoints',
      summary: 'Registered donor checkpoints (admin).',
      responses: { 200: { description: 'Checkpoints.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(Ckpt) }) } } }, ...errorResponses(401, 403) },
    }),
    (c) => c.json({ object: 'list' as const, data: deps.checkpoints.list() }, 200),
  );
  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/stethoscope/checkpoints/{name}',
      summary: 'Forget a registered donor checkpoint (admin); its files are not touched.',
      request: { params: z.object({ name: z.string().openapi({ param: { name: 'name', in: 'path' } }) }) },
      responses: { 200: { description: 'Forgotten.', content: { 'application/json': { schema: z.object({ name: z.string(), deleted: z.literal(true) }) } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const { name } = c.req.valid('param');
      if (!deps.checkpoints.remove(name)) throw notFound(`no registered checkpoint "${name}"`, 'checkpoint_not_found');
      return c.json({ name, deleted: true as const }, 200);
    },
  );

  app.use('/v1/stethoscope/merge', requireKey(auth, 'admin'));
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/merge',
      summary: 'A merge (admin): run prompts through the intact and the merged view with levels, and/or save a merge of pluggable kinds as a plugin.',
      request: { body: { content: { 'application/json': { schema: MergeBody } }, required: true } },
      responses: {
        200: { description: 'Outputs and levels (and the saved plugin).', content: { 'application/json': { schema: z.any() } } },
        201: { description: 'Saved as a plugin.', content: { 'application/json': { schema: z.any() } } },
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      if (!deps.serving.tokenizer() || deps.host.state !== 'ready') throw unavailable('The model is still loading.');
      if (!body.prompts && !body.save_as) throw badRequest('give "prompts", "save_as", or both', 'prompts');
      const model = body.model ?? deps.backboneName;
      const merged = deps.resolveView(model, { merge: body.merge });
      const out: Record<string, unknown> = { object: 'stethoscope.merge', model, merge: body.merge };
      let status: 200 | 201 = 200;
      if (body.save_as) {
        if (model !== deps.backboneName) throw badRequest('save_as: a saved merge is a plugin over the backbone itself; use the backbone as "model"', 'model');
        const bad = checkPluginId(body.save_as);
        if (bad) throw badRequest(`save_as: ${bad}`, 'save_as');
        const spec = merged.overlays.find((o) => o.type === 'merge')!;
        if (spec.type !== 'merge') throw new Error('unreachable');
        for (const [i, e] of spec.entries.entries()) {
          const frozen = e.names.find((n) => !PLUGGABLE_KINDS.includes(parseName(n)!.kind));
          if (frozen) throw badRequest(`merge.${i}.modules: "${frozen}" is frozen in the backbone; only ${PLUGGABLE_KINDS.join(', ')} can be saved as a plugin`, `merge.${i}.modules`);
        }
        const tmp = deps.plugins.store.tempPath();
        try {
          writeMergePlugin(spec, deps.backboneDir, tmp, deps.host.fingerprint!);
        } catch (e) {
          rmSync(tmp, { force: true });
          throw badRequest(`merge: ${(e as Error).message}`, 'merge');
        }
        const r = commitPluginFile(deps.plugins.store, { spec: deps.host.spec!, fingerprint: deps.host.fingerprint! }, tmp, body.save_as, await sha256File(tmp), statSync(tmp).size, body.description ?? '', body.overwrite);
        out.plugin = pluginView(r.manifest, deps.backboneName);
        status = 201;
      }
      if (body.prompts) out.results = await compare(deps.resolveView(model), merged, body.prompts, { maxTokens: body.max_tokens, thresholds: { ...DEFAULT_THRESHOLDS, ...body.thresholds }, scorer: body.scorer, label: 'merged' }, c.req.raw.signal);
      return c.json(out, status) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/destruction',
      summary: 'Destruction probe (admin): prompts through the intact and the destroyed view, both outputs with levels I-IV and their metrics; or a sweep job.',
      request: { body: { content: { 'application/json': { schema: DestructionBody } }, required: true } },
      responses: {
        200: { description: 'Outputs and levels.', content: { 'application/json': { schema: z.any() } } },
        202: { description: 'Sweep started: a job.', content: { 'application/json': { schema: Job } } },
        ...errorResponses(400, 401, 403, 404, 429, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const tok = deps.serving.tokenizer();
      if (!tok || deps.host.state !== 'ready') throw unavailable('The model is still loading.');
      const model = body.model ?? deps.backboneName;
      const intact = deps.resolveView(model);
      const thresholds: LevelThresholds = { ...DEFAULT_THRESHOLDS, ...body.thresholds };

      if (body.sweep) {
        const sw = body.sweep;
        if ((sw.text === undefined) === (sw.ids === undefined)) throw badRequest('sweep: give exactly one of "text" and "ids"', 'sweep.text');
        const ids = sw.ids ?? tok.encodePrompt(sw.text!).slice(0, 512);
        if (ids.length < 2) throw badRequest('sweep.text: needs at least 2 tokens', 'sweep.text');
        const bad = ids.find((id) => id >= deps.serving.vocabSize());
        if (bad !== undefined) throw badRequest(`sweep.ids: token id ${bad} is outside the vocabulary`, 'sweep.ids');
        const L = deps.host.spec!.numLayers;
        const stride = sw.stride ?? sw.window;
        const windows: [number, number][] = [];
        for (let s0 = 0; s0 < L; s0 += stride) windows.push([s0, Math.min(L - 1, s0 + sw.window - 1)]);
        const rows = sw.method === 'remove' ? ['layers'] : sw.modules;
        if (!rows.length) throw badRequest('sweep.modules: name the module kinds to sweep', 'sweep.modules');
        // Resolve every view now, so a bad spec is a 400 rather than a failed job.
        const grid = rows.map((kind) =>
          windows.map(([a, b]) => deps.resolveView(model, { destroy: [{ method: sw.method, modules: sw.method === 'remove' ? [] : [kind], layers: `${a}-${b}`, seed: sw.seed }] })),
        );
        const job = deps.jobs.start('destruction-sweep', body, async (_job, dir, progress) => {
          const cells: { module: string; layers: string; start: number; kl: number }[] = [];
          for (let r = 0; r < rows.length; r++) {
            const kls = await deps.host.kl(ids, intact, grid[r]);
            kls.forEach((v, w) => cells.push({ module: rows[r], layers: `${windows[w][0]}-${windows[w][1]}`, start: windows[w][0], kl: v }));
            progress(r + 1, rows.length, rows[r]);
          }
          const result = { method: sw.method, window: sw.window, stride, tokens: ids.length, score: 'mean KL(intact || destroyed), nats', cells };
          writeFileSync(join(dir, 'sweep.json'), JSON.stringify(result, null, 1));
          writeFileSync(join(dir, 'sweep.svg'), await renderSvg(sweepSpec(result)));
          return result;
        });
        return c.json(jobView(job), 202) as never;
      }

      if (body.table) {
        if (body.destroy || body.sweep || body.prompts) throw badRequest('"table" carries its own prompts and destructions; give it alone', 'table');
        const t = body.table;
        t.prompts.forEach((p, i) => {
          if ((p.prompt === undefined) === (p.messages === undefined)) throw badRequest(`table.prompts.${i}: give exactly one of "prompt" and "messages"`, `table.prompts.${i}`);
        });
        // Resolve every row's view now, so a bad spec is a 400 rather than a failed job.
        const rows = destructionRows(t).map((r) => {
          try {
            return deps.resolveView(model, { destroy: r.destroy });
          } catch (e) {
            if (e instanceof ApiError && e.param?.startsWith('destroy.0.')) throw badRequest(e.message.replace(/^destroy\.0\./, 'table.'), e.param.replace(/^destroy\.0\./, 'table.'));
            throw e;
          }
        });
        const job = deps.jobs.start('destruction-table', body, async (_job, dir, progress, signal) => {
          const table = await destructionTable(serverLab(deps.serving.runner, signal, { wait: true }), tok, t, { intact, rows }, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, progress });
          await writeDestructionTable(table, dir);
          return { markdown: destructionMarkdown(table), rows: table.rows.map((r) => ({ method: r.method, module: r.module, levels: r.outputs.map((o) => o.level) })), intact: table.intact.map((o) => o.level) };
        });
        return c.json(jobView(job), 202) as never;
      }
      if (!body.destroy) throw badRequest('give "destroy" (or "sweep" or "table")', 'destroy');
      if (!body.prompts) throw badRequest('give "prompts"', 'prompts');
      const destroyed = deps.resolveView(model, { destroy: body.destroy });
      const results = await compare(intact, destroyed, body.prompts, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, label: 'destroyed' }, c.req.raw.signal);
      return c.json({ object: 'stethoscope.destruction', model, destroy: body.destroy, thresholds, results }, 200) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/eval',
      summary: 'Start an evaluation job (admin): a JSONL set under a view, accuracy and average generated tokens, per-item outputs (and levels).',
      request: { body: { content: { 'application/json': { schema: EvalBody } }, required: true } },
      responses: { 202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}.', content: { 'application/json': { schema: Job } } }, ...errorResponses(400, 401, 403, 404, 503) },
    }),
    (c) => {
      const body = c.req.valid('json');
      const tok = deps.serving.tokenizer();
      if (!tok || deps.host.state !== 'ready') throw unavailable('The model is still loading.');
      let items: EvalItem[];
      try {
        if ((body.items === undefined) === (body.jsonl === undefined)) throw new EvalDataError('give exactly one of "items" and "jsonl"');
        const ids = new Set<string>();
        items = body.jsonl !== undefined ? parseJsonl(body.jsonl) : body.items!.map((it, i) => checkItem(it, `items.${i}`, ids));
      } catch (e) {
        if (e instanceof EvalDataError) throw badRequest(e.message, body.jsonl !== undefined ? 'jsonl' : 'items');
        throw e;
      }
      const model = body.model ?? deps.backboneName;
      const view = deps.resolveView(model, { merge: body.merge, destroy: body.destroy });
      const intact = deps.resolveView(deps.backboneName);
      const reasoning =
        body.mode === 'reasoning' ? { minThinkingTokens: body.min_thinking_tokens, maxThinkingTokens: body.max_thinking_tokens, wait: body.wait, format: body.reasoning_format ?? deps.serving.reasoningFormat } : undefined;
      if (reasoning) {
        try {
          reasoningFormat(tok, reasoning.format);
        } catch (e) {
          if (e instanceof PromptError) throw badRequest(e.message, e.param);
          throw e;
        }
      }
      const settings: EvalSettings = {
        maxTokens: body.max_tokens,
        temperature: body.temperature,
        seed: body.seed,
        chat: body.chat,
        reasoning,
        levels: body.levels,
        thresholds: { ...DEFAULT_THRESHOLDS, ...body.thresholds },
        concurrency: body.concurrency,
      };
      // A cancelled job's signal aborts its sequences in the scheduler.
      const lab = (signal: AbortSignal) => serverLab(deps.serving.runner, signal, { wait: true });
      if (body.table) {
        if (body.merge || body.destroy || body.model) throw badRequest('"table" runs its own rows over the backbone; give no model, merge or destroy', 'table');
        const rows = mergeRows(body.table, deps.host.spec!).map((row, i) => {
          let v: ViewSpec;
          try {
            v = deps.resolveView(deps.backboneName, { merge: row.merge });
          } catch (e) {
            if (e instanceof ApiError && body.table!.rows && e.param?.startsWith('merge')) throw badRequest(`table.rows.${i}.${e.message}`, `table.rows.${i}.${e.param}`);
            if (e instanceof ApiError && e.param?.startsWith('merge')) throw badRequest(`table.from: ${e.message}`, 'table.from');
            throw e;
          }
          return { row, view: v, scorer: body.scorer === 'view' ? v : intact };
        });
        const job = deps.jobs.start('merge-table', { ...body, jsonl: undefined, items: items.length }, async (_job, dir, progress, signal) => {
          const { table, results } = await mergeTable(lab(signal), tok, items, rows, settings, progress);
          writeMergeTable(table, results, dir);
          return { markdown: mergeMarkdown(table), rows: table.rows };
        });
        return c.json(jobView(job), 202) as never;
      }
      const job = deps.jobs.start('eval', { ...body, jsonl: undefined, items: items.length }, async (_job, dir, progress, signal) => {
        const { summary, results } = await runEval(items, tok, lab(signal), { run: view, scorer: body.scorer === 'view' ? view : intact }, settings, (d, t, last) => progress(d, t, last.id));
        writeFileSync(join(dir, 'results.jsonl'), resultsJsonl(results));
        writeFileSync(join(dir, 'summary.json'), JSON.stringify({ model, merge: body.merge ?? null, destroy: body.destroy ?? null, settings, ...summary }, null, 2));
        return summary;
      });
      return c.json(jobView(job), 202) as never;
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs',
      summary: 'List stethoscope jobs (admin), newest first.',
      responses: { 200: { description: 'Jobs.', content: { 'application/json': { schema: z.object({ object: z.literal('list'), data: z.array(Job) }) } } }, ...errorResponses(401, 403) },
    }),
    (c) => c.json({ object: 'list' as const, data: deps.jobs.list().map(jobView) }, 200),
  );

  const JobParam = z.object({ id: z.string().openapi({ param: { name: 'id', in: 'path' } }) });
  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}',
      summary: 'A job: status, progress, result, output files (admin).',
      request: { params: JobParam },
      responses: { 200: { description: 'The job.', content: { 'application/json': { schema: Job } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const j = deps.jobs.get(c.req.valid('param').id);
      if (!j) throw notFound(`no job "${c.req.valid('param').id}"`, 'job_not_found');
      return c.json(jobView(j), 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete',
      path: '/v1/stethoscope/jobs/{id}',
      summary: 'Cancel a running job (admin); its record stays, with status "cancelled" once it has stopped.',
      request: { params: JobParam },
      responses: { 202: { description: 'Cancelling.', content: { 'application/json': { schema: Job } } }, ...errorResponses(401, 403, 404, 409) },
    }),
    (c) => {
      const { id } = c.req.valid('param');
      const j = deps.jobs.get(id);
      if (!j) throw notFound(`no job "${id}"`, 'job_not_found');
      if (!deps.jobs.cancel(id)) throw new ApiError(409, `job "${id}" is not running (status ${j.status})`, 'invalid_request_error', 'job_not_running', 'id');
      return c.json(jobView(j), 202);
    },
  );

  app.openapi(
    createRoute({
      method: 'get',
      path: '/v1/stethoscope/jobs/{id}/files/{name}',
      summary: 'One output file of a job (JSON, CSV, SVG, HTML) (admin).',
      request: { params: JobParam.extend({ name: z.string().openapi({ param: { name: 'name', in: 'path' } }) }) },
      responses: { 200: { description: 'The file.', content: { 'application/octet-stream': { schema: z.any() } } }, ...errorResponses(401, 403, 404) },
    }),
    (c) => {
      const { id, name } = c.req.valid('param');
      if (!deps.jobs.get(id) || !deps.jobs.files(id).includes(name)) throw notFound(`no file "${name}" in job "${id}"`, 'file_not_found');
      c.header('Content-Type', CONTENT_TYPES[extname(name)] ?? 'application/octet-stream');
      return c.body(readFileSync(join(deps.jobs.dir(id), name))) as never;
    },
  );
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/export',
      summary: 'Write a view (plugin, merge, destruction) as a full Hugging Face checkpoint directory (admin).',
      request: { body: { content: { 'application/json': { schema: ExportBody } }, required: true } },
      responses: {
        201: { description: 'Written.', content: { 'application/json': { schema: z.object({ path: z.string(), tensors: z.number().int() }) } } },
        ...errorResponses(400, 401, 403, 404, 409, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      if (deps.host.state !== 'ready') throw unavailable('The model is still loading.');
      const bad = checkPluginId(body.name);
      if (bad) throw badRequest(`name: ${bad}`, 'name');
      const out = join(deps.dataDir, 'exports', body.name);
      if (existsSync(out) && !body.overwrite) throw new ApiError(409, `export "${body.name}" exists; pass "overwrite": true`, 'invalid_request_error', 'export_exists', 'name');
      const view = deps.resolveView(body.model, { merge: body.merge, destroy: body.destroy });
      try {
        const { tensors } = await deps.host.export(view, out, body.dtype.toUpperCase() as 'F32' | 'BF16' | 'F16');
        return c.json({ path: out, tensors }, 201);
      } catch (e) {
        throw badRequest(`export failed: ${(e as Error).message}`);
      }
    },
  );
}
