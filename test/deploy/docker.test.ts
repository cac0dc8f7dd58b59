/**
 * No Docker engine runs here, so the Dockerfile is checked two ways: its instructions against what the README
 * tells users to run, and its install and start steps replayed in a clean temporary copy of the repository
 * (only what its COPY lines copy, its RUN install command, its environment, its entrypoint, its health check).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DockerfileParser, type Instruction, type ModifiableInstruction } from 'dockerfile-ast';
import { pathWithNode24 } from '../helpers/node24.ts';

const ROOT = new URL('../..', import.meta.url).pathname;
const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');

interface Stage {
  name: string | null;
  base: string;
  instructions: Instruction[];
}

const dockerfile = DockerfileParser.parse(read('Dockerfile'));
const instructions = dockerfile.getInstructions();
/** Build arguments with their defaults (the ARGs before the first FROM). */
const buildArgs = new Map(dockerfile.getInitialARGs().map((a) => [a.getProperty()!.getName(), a.getProperty()!.getValue() ?? '']));
const stages: Stage[] = [];
for (const i of instructions) {
  if (i.getKeyword() === 'FROM') {
    const args = i.getExpandedArguments().map((a) => a.getValue());
    stages.push({ name: args[1]?.toUpperCase() === 'AS' ? args[2] : null, base: args[0], instructions: [] });
  } else stages.at(-1)?.instructions.push(i);
}
const final = stages.at(-1)!;
const deps = stages.find((s) => s.name === 'deps')!;
const of = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.getKeyword() === keyword);
/** A JSON-array (exec form) instruction's argv. */
/** COPY --from=STAGE. */
const copiesFrom = (i: Instruction, stage?: string) => (i as ModifiableInstruction).getFlags().some((f) => f.getName() === 'from' && (stage === undefined || f.getValue() === stage));
const execForm = (i: Instruction) => JSON.parse(i.getArgumentsContent()!.replace(/^CMD\s+/, '')) as string[];
const finalEnv = new Map<string, string>();
for (const e of of(final, 'ENV')) {
  for (const a of e.getExpandedArguments()) {
    const [k, ...v] = a.getValue().split('=');
    finalEnv.set(k, v.join('='));
  }
}
const entrypoint = [...execForm(of(final, 'ENTRYPOINT')[0]), ...execForm(of(final, 'CMD')[0])];

/** The deployment page's docker commands (continuation lines joined), split into words. */
function readmeDockerCommands(): string[][] {
  const text = read('docs/deployment.md').replace(/\\\n\s*/g, ' ');
  return [...text.matchAll(/^docker (build|run) .*$/gm)].map((m) => m[0].trim().split(/\s+/));
}

describe('Dockerfile', () => {
  it("is multi-stage on a slim Node 24 base and installs with the README's npm ci, without dev dependencies", () => {
    assert.ok(stages.length >= 3, 'a dependency stage and a runtime stage at least');
    assert.match(buildArgs.get('NODE_IMAGE')!, /^node:24(\.\d+)*-[a-z]+-slim$/);
    assert.equal(stages.find((s) => s.name === 'runtime-cpu')!.base, buildArgs.get('NODE_IMAGE'));
    assert.match(read('README.md'), /npm ci && npm start/);
    const install = of(deps, 'RUN')
      .map((r) => r.getArgumentsContent()!)
      .find((c) => /npm ci/.test(c));
    assert.ok(install, 'the dependency stage runs npm ci');
    assert.match(install, /npm ci --omit=dev --omit=optional/);
    // Only the CUDA variant asks onnxruntime-node's install script for the CUDA provider files.
    assert.match(install, /\$SFN_VARIANT" = cuda \] && echo cuda12 \|\| echo skip/);
    assert.equal(buildArgs.get('SFN_VARIANT'), 'cpu');
    assert.ok(
      stages.some((s) => s.name === 'runtime-cuda'),
      'a CUDA runtime stage',
    );
    assert.equal(final.base, 'runtime-cpu', 'the final stage is chosen by SFN_VARIANT (default cpu)');
    assert.equal(finalEnv.get('SFN_DEVICE'), 'cpu', 'SFN_DEVICE follows the variant');
    // The final stage takes node_modules from the dependency stage, never installs dev dependencies itself.
    assert.ok(of(final, 'COPY').some((c) => copiesFrom(c, 'deps')));
    assert.ok(!of(final, 'RUN').some((r) => /npm (ci|install)/.test(r.getArgumentsContent()!)));
  });

  it('runs as a non-root user, with /data as a volume, a health check on /health and the served port exposed', () => {
    const user = of(final, 'USER').at(-1)!.getArgumentsContent()!;
    assert.ok(!['root', '0', '0:0'].includes(user), `USER ${user}`);
    const userAdd = of(final, 'RUN')
      .map((r) => r.getArgumentsContent()!)
      .find((c) => c.includes('useradd'))!;
    assert.match(userAdd, new RegExp(`--uid (?!0\\b)\\d+ .*\\b${user}\\b`));
    const userIndex = final.instructions.lastIndexOf(of(final, 'USER').at(-1)!);
    assert.ok(final.instructions.indexOf(of(final, 'ENTRYPOINT')[0]) > userIndex, 'the entrypoint runs as that user');
    assert.deepEqual(JSON.parse(of(final, 'VOLUME')[0].getArgumentsContent()!), [finalEnv.get('SFN_DATA_DIR')]);
    assert.equal(of(final, 'EXPOSE')[0].getArgumentsContent(), finalEnv.get('SFN_PORT'));
    assert.equal(finalEnv.get('SFN_HOST'), '0.0.0.0');
    assert.match(of(final, 'HEALTHCHECK')[0].getArgumentsContent()!, /\/health/);
    assert.deepEqual(entrypoint, ['node', 'bin/sfn.js', 'serve']);
  });

  it('matches the docker commands of docs/deployment.md', () => {
    const commands = readmeDockerCommands();
    const builds = commands.filter((c) => c[1] === 'build');
    const runs = commands.filter((c) => c[1] === 'run');
    assert.ok(builds.length >= 2 && runs.length >= 2, 'docs/deployment.md shows a CPU and a CUDA build and run');
    const tags = new Set<string>();
    for (const b of builds) {
      for (let i = 0; i < b.length; i++) {
        if (b[i] === '--build-arg') {
          const [name, value] = b[i + 1].split('=');
          assert.ok(buildArgs.has(name), `docs/deployment.md passes --build-arg ${name}, which the Dockerfile does not declare`);
          if (name === 'SFN_VARIANT')
            assert.ok(
              stages.some((s) => s.name === `runtime-${value}`),
              `no runtime stage for ${value}`,
            );
        }
        if (b[i] === '-t') tags.add(b[i + 1]);
      }
    }
    const configured = new Set([...read('docs/configuration.md').matchAll(/`(SFN_[A-Z_]+)`/g)].map((m) => m[1]));
    for (const r of runs) {
      assert.ok(tags.has(r.at(-1)!), `docker run uses an image docs/deployment.md builds (${r.at(-1)})`);
      const ports = r.flatMap((w, i) => (w === '-p' ? [r[i + 1]] : []));
      assert.deepEqual(
        ports.map((p) => p.split(':')[1]),
        [finalEnv.get('SFN_PORT')],
      );
      const mounts = r.flatMap((w, i) => (w === '-v' ? [r[i + 1].split(':')] : []));
      assert.ok(
        mounts.some((m) => m[1] === finalEnv.get('SFN_DATA_DIR')),
        'the data volume is mounted',
      );
      const model = mounts.find((m) => m[1] === '/model');
      assert.ok(model && model[2] === 'ro', 'the model directory is mounted read-only');
      const env = r.flatMap((w, i) => (w === '-e' ? [r[i + 1].split('=')] : []));
      assert.ok(env.some(([k, v]) => k === 'SFN_MODEL' && v === '/model'));
      for (const [k] of env) assert.ok(configured.has(k), `${k} is in docs/configuration.md`);
    }
  });

  it('copies only files that exist and that .dockerignore lets through', () => {
    const ignored = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    for (const stage of stages) {
      for (const c of of(stage, 'COPY')) {
        if (copiesFrom(c)) continue;
        const sources = c
          .getExpandedArguments()
          .map((a) => a.getValue())
          .slice(0, -1);
        for (const src of sources) {
          assert.ok(existsSync(join(ROOT, src)), `COPY ${src}: no such file`);
          assert.ok(!ignored.includes(src.split('/')[0]), `COPY ${src} is excluded by .dockerignore`);
        }
      }
    }
  });
});

/** A free TCP port on loopback. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe("the image's install and start steps, replayed in a clean copy", { timeout: 600_000 }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'sfn-image-'));
  const app = join(tmp, 'app');
  const data = join(tmp, 'data');
  let child: ReturnType<typeof spawn> | null = null;
  let base = '';
  let port = 0;
  let env: NodeJS.ProcessEnv = {};
  const output: string[] = [];

  before(async () => {
    mkdirSync(app);
    mkdirSync(data);
    // The dependency stage: its COPY lines, then its RUN lines in WORKDIR, with the build arguments' defaults.
    const git = execFileSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
    const copy = (stage: Stage) => {
      for (const c of of(stage, 'COPY')) {
        if (copiesFrom(c)) continue;
        const args = c.getExpandedArguments().map((a) => a.getValue());
        const dest = args.at(-1)!;
        for (const src of args.slice(0, -1)) {
          // Tracked files only: a clean clone, not this working tree's leftovers.
          for (const f of git.filter((g) => g === src || g.startsWith(src + '/'))) {
            const target = dest.endsWith('/') && src === f ? join(app, dest, f) : join(app, dest, f.slice(src.length));
            mkdirSync(join(target, '..'), { recursive: true });
            cpSync(join(ROOT, f), target);
          }
        }
      }
    };
    copy(deps);
    const buildEnv = { ...process.env, ...Object.fromEntries(buildArgs), npm_config_prefer_offline: 'true' };
    for (const r of of(deps, 'RUN')) {
      const res = spawnSync('sh', ['-c', r.getArgumentsContent()!], { cwd: app, env: buildEnv, encoding: 'utf8' });
      assert.equal(res.status, 0, `RUN ${r.getArgumentsContent()} failed:\n${res.stdout}\n${res.stderr}`);
    }
    copy(final);
    port = await freePort();
    // The final stage's environment, with its directories moved under the temporary folder; `node` is Node 24's,
    // as in the image.
    env = { PATH: await pathWithNode24(), HOME: tmp };
    for (const [k, v] of finalEnv) env[k] = v.startsWith('/data') ? data + v.slice('/data'.length) : v;
    env.SFN_PORT = String(port);
    env.SFN_HOST = '127.0.0.1';
    base = `http://127.0.0.1:${port}`;
  });

  after(() => {
    child?.kill('SIGKILL');
    rmSync(tmp, { recursive: true, force: true });
  });

  it('installs no dev or optional dependencies: Node 24 runs the TypeScript without tsx', () => {
    assert.ok(existsSync(join(app, 'node_modules/onnxruntime-node')));
    assert.ok(!existsSync(join(app, 'node_modules/tsx')), 'tsx is not in the image');
    assert.ok(!existsSync(join(app, 'node_modules/esbuild')), "nor tsx's esbuild");
    assert.ok(!existsSync(join(app, 'node_modules/typescript')), 'typescript is a dev dependency');
    assert.ok(!existsSync(join(app, 'node_modules/fast-check')));
  });

  it('starts with the entrypoint, passes its own health check, serves a chat completion and stops on SIGTERM', async () => {
    const node = spawnSync('node', ['--version'], { env, encoding: 'utf8' }).stdout.trim();
    assert.match(node, /^v24\./, "the replay runs on the image's Node");
    child = spawn(entrypoint[0], entrypoint.slice(1), { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => output.push(String(d)));
    child.stderr!.on('data', (d) => output.push(String(d)));
    const health = execForm(of(final, 'HEALTHCHECK')[0]);
    const deadline = Date.now() + 120_000;
    for (;;) {
      const h = spawnSync(health[0], health.slice(1), { env, encoding: 'utf8' });
      if (h.status === 0) break;
      assert.ok(Date.now() < deadline && child.exitCode === null, `the health check never passed:\n${output.join('')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    while ((await fetch(`${base}/ready`)).status !== 200) {
      assert.ok(Date.now() < deadline, `never ready:\n${output.join('')}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.match(output.join(''), /built-in model stories260K/, 'the built-in model is announced');
    // bin/sfn.js re-executed itself in place with glibc's tunables set (bin/malloc.js): same pid, new env. glibc
    // (2.36 here) parses the variable in place, so /proc shows it cut at its first ':' (malloc.test.ts checks the rest).
    const environ = readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0');
    assert.ok(
      environ.some((e) => e.startsWith('GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576')),
      environ.filter((e) => e.startsWith('GLIBC')).join() || 'no GLIBC_TUNABLES',
    );
    const r = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, seed: 1 }),
    });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { choices: { message: { content: string } }[]; usage: { completion_tokens: number } };
    assert.ok(body.usage.completion_tokens >= 1);
    const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    child = null;
  });
});
