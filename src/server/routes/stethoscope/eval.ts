/**
 * `POST /v1/stethoscope/eval` (admin): evaluation jobs, and the merge table (Table 1).
 */
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ViewSpec } from '../../../runtime/protocol.ts';
import { DestroySpec, MergeSpec } from '../../../views/spec.ts';
import { ApiError, badRequest } from '../../errors.ts';
import { DEFAULT_THRESHOLDS } from '../../../stethoscope/levels.ts';
import { PromptError, REASONING_FORMATS, reasoningFormat } from '../../../engine/prompt.ts';
import { checkItem, EvalDataError, parseJsonl, resultsJsonl, runEval, type EvalItem, type EvalSettings } from '../../../stethoscope/eval.ts';
import { mergeMarkdown, mergeRows, mergeTable, MergeTableSpec, writeMergeTable } from '../../../stethoscope/tables.ts';
import { errorResponses } from '../../schemas.ts';
import { jobView, Thresholds, Scorer, JobSchema, type StethoscopeDeps, engineClient } from './shared.ts';
import { ready } from '../openai/shared.ts';

const EvalBody = z
  .strictObject({
    model: z.string().optional().openapi({ description: 'The backbone (default) or `backbone:plugin-id`.' }),
    merge: MergeSpec.nullish(),
    destroy: DestroySpec.nullish(),
    items: z.array(z.unknown()).min(1).max(100000).optional().openapi({ description: 'Items {id, prompt | messages, answer}.' }),
    jsonl: z.string().optional().openapi({ description: 'Or the set as JSONL text, one item per line.' }),
    max_tokens: z.number().int().min(1).max(32768).optional().describe('Default 512, plus max_thinking_tokens in reasoning mode (so thinking cannot spend the whole budget).'),
    temperature: z.number().min(0).max(2).default(0),
    seed: z.number().int().min(0).optional(),
    chat: z.boolean().default(true),
    mode: z.enum(['chat', 'reasoning']).default('chat'),
    reasoning_format: z.enum(REASONING_FORMATS).optional().openapi({ description: "Reasoning mode's format (think | s1 | auto); default the server's --reasoning-format." }),
    min_thinking_tokens: z.number().int().min(0).optional(),
    max_thinking_tokens: z.number().int().min(1).optional(),
    wait: z.number().int().min(0).max(64).optional(),
    levels: z.boolean().default(false).openapi({ description: "Also score each output's level I-IV (two scoring passes per item)." }),
    thresholds: Thresholds.optional(),
    scorer: Scorer,
    table: MergeTableSpec.optional().describe(
      "Table mode: the paper's Table 1. Rows A, B, M1, M2, M3 (`from`: the fine-tune B) or any `rows` of merge specs, each evaluated on the set: accuracy, average tokens (and levels).",
    ),
    concurrency: z.number().int().min(1).max(64).default(4),
  })
  .openapi('EvalRequest');

export function evalRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/eval',
      summary: 'Start an evaluation job (admin): a JSONL set under a view, accuracy and average generated tokens, per-item outputs (and levels).',
      request: { body: { content: { 'application/json': { schema: EvalBody } }, required: true } },
      responses: { 202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}.', content: { 'application/json': { schema: JobSchema } } }, ...errorResponses(400, 401, 403, 404, 429, 503) },
    }),
    (c) => {
      const body = c.req.valid('json');
      const tok = ready(deps.serving);
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
        body.mode === 'reasoning'
          ? { minThinkingTokens: body.min_thinking_tokens, maxThinkingTokens: body.max_thinking_tokens, wait: body.wait, format: body.reasoning_format ?? deps.serving.reasoningFormat }
          : undefined;
      if (reasoning) {
        try {
          reasoningFormat(tok, reasoning.format);
        } catch (e) {
          if (e instanceof PromptError) throw badRequest(e.message, e.param);
          throw e;
        }
      }
      const settings: EvalSettings = {
        maxTokens: body.max_tokens ?? 512 + (body.mode === 'reasoning' ? (body.max_thinking_tokens ?? 0) : 0),
        temperature: body.temperature,
        seed: body.seed,
        chat: body.chat,
        reasoning,
        levels: body.levels,
        thresholds: { ...DEFAULT_THRESHOLDS, ...body.thresholds },
        concurrency: body.concurrency,
      };
      // A cancelled job's signal aborts its sequences in the scheduler.
      const client = (signal: AbortSignal) => engineClient(deps, signal, { wait: true });
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
          progress(0, rows.length * items.length, 'started');
          const { table, results } = await mergeTable(client(signal), tok, items, rows, settings, progress);
          writeMergeTable(table, results, dir);
          return { markdown: mergeMarkdown(table), rows: table.rows };
        });
        return c.json(jobView(deps, job), 202) as never;
      }
      const job = deps.jobs.start('eval', { ...body, jsonl: undefined, items: items.length }, async (_job, dir, progress, signal) => {
        progress(0, items.length, 'started');
        const { summary, results } = await runEval(items, tok, client(signal), { run: view, scorer: body.scorer === 'view' ? view : intact }, settings, (d, t, last) => progress(d, t, last.id));
        writeFileSync(join(dir, 'results.jsonl'), resultsJsonl(results));
        writeFileSync(join(dir, 'summary.json'), JSON.stringify({ model, merge: body.merge ?? null, destroy: body.destroy ?? null, settings, ...summary }, null, 2));
        return summary;
      });
      return c.json(jobView(deps, job), 202) as never;
    },
  );
}
