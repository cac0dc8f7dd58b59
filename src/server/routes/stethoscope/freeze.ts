/**
 * `POST /v1/stethoscope/freeze` (admin): a Freeze run as a job, in a worker thread, with progress (the loss of
 * each step), its loss curve as files and cancellation by `DELETE /v1/stethoscope/jobs/{id}`. With `save_as` the
 * plugin it trains is validated and stored, so `backbone:<id>` serves it when the job ends. With `table` it is the
 * paper's Table 2: every row trained on `data` and evaluated on `table.eval`.
 */
import { Seed } from '../../../views/spec.ts';
import { copyFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createRoute, type OpenAPIHono, z } from '@hono/zod-openapi';
import { PLUGGABLE_KINDS, parseName } from '../../../model/names.ts';
import { checkPluginId, sha256File } from '../../../plugins/store.ts';
import { EvalDataError, parseJsonl, type EvalSettings } from '../../../stethoscope/eval.ts';
import type { FreezeSettings } from '../../../stethoscope/freeze.ts';
import { trainingRows } from '../../../stethoscope/freeze-data.ts';
import { FreezeError, parseTrainKinds, trainableNames } from '../../../stethoscope/freeze-sets.ts';
import { DEFAULT_TABLE2, freezeTable, freezeTableMarkdown, FreezeTableRows, writeFreezeTable } from '../../../stethoscope/freeze-table.ts';
import { freezeInWorker } from '../../../stethoscope/freeze-worker.ts';
import { DEFAULT_THRESHOLDS } from '../../../stethoscope/levels.ts';
import { badRequest } from '../../errors.ts';
import { errorResponses } from '../../schemas.ts';
import { commitPluginFile, pluginView } from '../plugins.ts';
import { JobSchema, type StethoscopeDeps, engineClient } from './shared.ts';
import { ready } from '../openai/shared.ts';

const FreezeBody = z
  .strictObject({
    kinds: z.array(z.string()).min(1).openapi({ description: 'Module sets to train: o_proj, norms, embed, head, q_proj, k_proj, v_proj, qkv, gate_proj, up_proj, down_proj, mlp, all.' }),
    data: z.string().min(1).optional().openapi({ description: 'The training set as JSONL: {"text"} | {"prompt", "completion"} | {"messages"} per line.' }),
    ids: z.array(z.number().int().min(0)).min(2).max(4096).optional().openapi({ description: 'Or one fixed sequence of token ids (every token after the first a target).' }),
    steps: z.number().int().min(1).max(1_000_000).default(100),
    lr: z.number().positive().max(1).default(1e-4),
    wd: z.number().min(0).max(1).default(0),
    batch: z.number().int().min(1).max(1024).default(8),
    seq: z.number().int().min(2).max(131072).default(512).openapi({ description: 'Sequences are cut to this many tokens.' }),
    warmup: z.number().int().min(0).default(0),
    schedule: z.enum(['constant', 'cosine']).default('constant'),
    grad_accum: z.number().int().min(1).max(1024).default(1),
    seed: Seed.default(0),
    checkpoint_every: z.number().int().min(0).default(0).openapi({ description: 'Save parameters and optimizer state every K steps (0: at the end only).' }),
    save_as: z.string().optional().openapi({ description: 'Store the trained plugin under this id (pluggable kinds only): `backbone:id` serves it when the job ends.' }),
    description: z.string().max(1000).optional(),
    overwrite: z.boolean().default(false),
    table: z
      .strictObject({
        rows: FreezeTableRows.optional().describe("Runs {name, kinds}; default the paper's F1-F4."),
        eval: z.string().min(1).describe('The evaluation set as JSONL ({id, prompt | messages, answer} per line).'),
        max_tokens: z.number().int().min(1).max(32768).default(64),
        levels: z.boolean().default(false),
        chat: z.boolean().default(true),
      })
      .optional()
      .describe("Table mode: the paper's Table 2. Each row trained on `data` (no `kinds`, `ids` or `save_as`) and evaluated on `eval`."),
  })
  .openapi('FreezeRequest');

export function freezeRoutes(app: OpenAPIHono, deps: StethoscopeDeps): void {
  app.openapi(
    createRoute({
      method: 'post',
      path: '/v1/stethoscope/freeze',
      summary: "Start a Freeze run (admin): fine-tune only the chosen module kinds of the backbone; or the paper's Table 2 with `table`.",
      request: { body: { content: { 'application/json': { schema: FreezeBody } }, required: true } },
      responses: {
        202: { description: 'Started; poll GET /v1/stethoscope/jobs/{id}; DELETE it to cancel.', content: { 'application/json': { schema: JobSchema } } },
        ...errorResponses(400, 401, 403, 409, 429, 503),
      },
    }),
    (c) => {
      const body = c.req.valid('json');
      const tok = ready(deps.serving);
      const spec = deps.host.spec!;
      if ((body.data === undefined) === (body.ids === undefined)) throw badRequest('give exactly one of "data" and "ids"', 'data');
      let rows;
      try {
        rows = body.ids ? [{ ids: body.ids, targets: body.ids.map(() => true) }] : trainingRows(tok, body.data!, Math.min(body.seq, spec.maxPositionEmbeddings));
      } catch (e) {
        if (e instanceof FreezeError) throw badRequest(`data: ${e.message}`, 'data');
        throw e;
      }
      const bad = rows.flatMap((r) => r.ids).find((id) => id >= spec.vocabSize);
      if (bad !== undefined) throw badRequest(`ids: token id ${bad} is outside the vocabulary`, 'ids');
      const kindsOk = (kinds: string[], param: string) => {
        try {
          return trainableNames(spec, parseTrainKinds(kinds));
        } catch (e) {
          if (e instanceof FreezeError) throw badRequest(`${param}: ${e.message}`, param);
          throw e;
        }
      };
      const isPluggable = (names: Set<string>) => [...names].every((n) => PLUGGABLE_KINDS.includes(parseName(n)!.kind));
      const settings = (kinds: string[], out: string): FreezeSettings => ({
        model: deps.backboneDir,
        kinds,
        rows,
        steps: body.steps,
        lr: body.lr,
        wd: body.wd,
        batch: body.batch,
        gradAccum: body.grad_accum,
        warmup: body.warmup,
        schedule: body.schedule,
        seed: body.seed,
        checkpointEvery: body.checkpoint_every,
        out,
        resume: false,
        description: body.description,
      });
      const params = { ...body, data: body.data === undefined ? undefined : `${rows.length} rows`, table: body.table ? { ...body.table, eval: '(set)' } : undefined };

      if (body.table) {
        if (body.save_as || body.ids) throw badRequest('"table" trains its own rows on "data"; give no "save_as" or "ids"', 'table');
        const table = body.table;
        const tableRows = table.rows ?? DEFAULT_TABLE2;
        tableRows.forEach((r, i) => kindsOk(r.kinds, `table.rows.${i}.kinds`));
        let items;
        try {
          items = parseJsonl(table.eval);
        } catch (e) {
          if (e instanceof EvalDataError) throw badRequest(`table.eval: ${e.message}`, 'table.eval');
          throw e;
        }
        const evalSettings: EvalSettings = { maxTokens: table.max_tokens, temperature: 0, chat: table.chat, levels: table.levels, thresholds: DEFAULT_THRESHOLDS, concurrency: 8 };
        const job = deps.jobs.start('freeze-table', params, async (_job, dir, progress, signal) => {
          const { lines, curves } = await freezeTable(
            tableRows,
            async (row) => {
              const out = isPluggable(kindsOk(row.kinds, 'kinds')) ? join(dir, `${row.name}.safetensors`) : join(dir, row.name);
              const result = await freezeInWorker(settings(row.kinds, out), (s, t, loss) => progress(s, t, `${row.name}: step ${s}/${t}, loss ${loss.toFixed(4)}`), signal);
              return { result, view: deps.trainedView(out) };
            },
            deps.resolveView(deps.backboneName),
            engineClient(deps, signal, { wait: true }),
            tok,
            items,
            evalSettings,
          );
          await writeFreezeTable(lines, curves, dir);
          return { markdown: freezeTableMarkdown(lines), rows: lines };
        });
        return c.json({ ...job, files: [] }, 202);
      }

      const names = kindsOk(body.kinds, 'kinds');
      const pluggable = isPluggable(names);
      if (body.save_as !== undefined) {
        if (!pluggable) throw badRequest('save_as: only o_proj, norms, embed and head make a plugin; q/k/v or MLP runs write a checkpoint (a job file)', 'save_as');
        const bad = checkPluginId(body.save_as);
        if (bad) throw badRequest(`save_as: ${bad}`, 'save_as');
        if (deps.plugins.store.get(body.save_as) && !body.overwrite) throw badRequest(`save_as: plugin "${body.save_as}" exists; pass "overwrite": true`, 'save_as');
      }
      const job = deps.jobs.start('freeze', params, async (_job, dir, progress, signal) => {
        const out = pluggable ? join(dir, 'plugin.safetensors') : join(dir, 'checkpoint');
        const r = await freezeInWorker(settings(body.kinds, out), (s, t, loss) => progress(s, t, `step ${s}/${t}, loss ${loss.toFixed(4)}`), signal);
        const summary = {
          kind: r.kind,
          kinds: r.kinds,
          parameters: r.parameters,
          steps: r.steps,
          first_loss: r.losses[0],
          final_loss: r.final_loss,
          steps_per_second: r.steps_per_second,
          tokens_per_second: r.tokens_per_second,
          files: r.files,
        };
        if (body.save_as === undefined) return summary;
        const tmp = deps.plugins.store.tempPath();
        try {
          copyFileSync(out, tmp);
          const backbone = { spec, fingerprint: deps.host.fingerprint! };
          const { manifest } = await commitPluginFile(
            deps.plugins.store,
            backbone,
            tmp,
            body.save_as,
            await sha256File(tmp),
            statSync(tmp).size,
            body.description ?? `Freeze: ${body.kinds.join(', ')}`,
            body.overwrite,
          );
          return { ...summary, plugin: pluginView(manifest, deps.backboneName) };
        } finally {
          rmSync(tmp, { force: true });
        }
      });
      return c.json({ ...job, files: [] }, 202);
    },
  );
}
