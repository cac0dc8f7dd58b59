# syntax=docker/dockerfile:1
# sfn's container image. CPU by default; `--build-arg SFN_VARIANT=cuda` installs onnxruntime's CUDA provider
# files and selects it (SFN_DEVICE=cuda, falling back to the CPU with a warning where no GPU is found).
# test/deploy/docker.test.ts replays this file's install and start steps without a Docker engine.
ARG SFN_VARIANT=cpu
# Node 24 (the current LTS) strips TypeScript's types itself, so the image needs no tsx.
ARG NODE_IMAGE=node:24-bookworm-slim
# CUDA 12 and cuDNN 9 runtime libraries, which onnxruntime-node's CUDA provider loads.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${NODE_IMAGE} AS deps
ARG SFN_VARIANT
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# The README's install command without dev or optional dependencies (tsx, only needed where Node cannot strip
# types). The environment variable outranks .npmrc's `onnxruntime-node-install=skip`, so only the CUDA variant
# downloads the provider files (at build time).
RUN ONNXRUNTIME_NODE_INSTALL="$([ "$SFN_VARIANT" = cuda ] && echo cuda12 || echo skip)" npm ci --omit=dev --omit=optional --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime-cpu

FROM ${CUDA_IMAGE} AS runtime-cuda
COPY --from=deps /usr/local/bin/node /usr/local/bin/node

FROM runtime-${SFN_VARIANT}
ARG SFN_VARIANT
ENV NODE_ENV=production \
    SFN_HOST=0.0.0.0 \
    SFN_PORT=8000 \
    SFN_DATA_DIR=/data \
    SFN_CACHE_DIR=/data/cache \
    SFN_DEVICE=${SFN_VARIANT}
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sfn \
    && mkdir -p /data /model && chown sfn:sfn /data
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json .npmrc ./
COPY bin ./bin
COPY src ./src
COPY models ./models
USER sfn
# Plugins, job results and generated models' cache; with no SFN_MODEL the built-in stories260K (models/) is served. Mount a checkpoint read-only at /model and set SFN_MODEL=/model.
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.SFN_PORT || 8000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "bin/sfn.js"]
CMD ["serve"]
