/**
 * `POST /v1/stethoscope/destruction` (admin): destruction probes, sweeps and the destruction table (Table 3).
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { DestroySpec } from '../../../views/spec.ts';
import { ApiError, badRequest } from '../../errors.ts';
import { destructionSweep, sweepGrid, writeSweep, type SweepSettings } from '../../../stethoscope/sweep.ts';
import { DEFAULT_THRESHOLDS, type LevelThresholds } from '../../../stethoscope/levels.ts';
import { ProbePrompt } from '../../../stethoscope/probe.ts';
import { destructionMarkdown, destructionRows, destructionTable, DestructionTableSpec, writeDestructionTable } from '../../../stethoscope/tables.ts';
import { errorResponses } from '../../schemas.ts';
import { compare, jobView, probeResultsSchema, Thresholds, Scorer, JobSchema, type StethoscopeDeps, engineClient } from './shared.ts';
import { ready } from '../openai/shared.ts';

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

const DestructionResponse = z
  .object({
    object: z.literal('stethoscope.destruction'),
    model: z.string(),
    destroy: DestroySpec,
    thresholds: z.object({ maxRepetition: z.number(), maxNll: z.number(), minPmi: z.number(), minTokens: z.number().int() }),
    results: probeResultsSchema('destroyed'),
  })
  .openapi('DestructionResponse');

export function destructionRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/destruction',
      summary: 'Destruction probe (admin): prompts through the intact and the destroyed view, both outputs with levels I-IV and their metrics; or a sweep job.',
      request: { body: { content: { 'application/json': { schema: DestructionBody } }, required: true } },
      responses: {
        200: { description: 'Outputs and levels.', content: { 'application/json': { schema: DestructionResponse } } },
        202: { description: 'Sweep started: a job.', content: { 'application/json': { schema: JobSchema } } },
        ...errorResponses(400, 401, 403, 404, 429, 503),
      },
    }),
    async (c) => {
      const body = c.req.valid('json');
      const tok = ready(deps.serving);
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
        const settings: SweepSettings = { method: sw.method, modules: sw.modules, window: sw.window, stride: sw.stride, seed: sw.seed };
        if (sw.method !== 'remove' && !sw.modules.length) throw badRequest('sweep.modules: name the module kinds to sweep', 'sweep.modules');
        const specs = sweepGrid(deps.host.spec!.numLayers, settings);
        // Resolve every view now, so a bad spec is a 400 rather than a failed job.
        const grid = specs.map((row) => row.map((cell) => deps.resolveView(model, { destroy: cell.destroy })));
        const job = deps.jobs.start('destruction-sweep', body, async (_job, dir, progress, signal) => {
          const result = await destructionSweep(engineClient(deps, signal, { wait: true }), ids, intact, specs, grid, settings, progress);
          await writeSweep(result, dir);
          return result;
        });
        return c.json(jobView(deps, job), 202) as never;
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
          const table = await destructionTable(engineClient(deps, signal, { wait: true }), tok, t, { intact, rows }, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, progress });
          await writeDestructionTable(table, dir);
          return {
            markdown: destructionMarkdown(table),
            rows: table.rows.map((r) => ({ method: r.method, module: r.module, levels: r.outputs.map((o) => o.level) })),
            intact: table.intact.map((o) => o.level),
          };
        });
        return c.json(jobView(deps, job), 202) as never;
      }
      if (!body.destroy) throw badRequest('give "destroy" (or "sweep" or "table")', 'destroy');
      if (!body.prompts) throw badRequest('give "prompts"', 'prompts');
      const destroyed = deps.resolveView(model, { destroy: body.destroy });
      const results = await compare(deps, intact, destroyed, body.prompts, { maxTokens: body.max_tokens, thresholds, scorer: body.scorer, label: 'destroyed' }, c.req.raw.signal);
      return c.json({ object: 'stethoscope.destruction', model, destroy: body.destroy, thresholds, results }, 200) as never;
    },
  );
}
