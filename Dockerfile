# syntax=docker/dockerfile:1
# The Switchboard image: one binary, every role (`switchboard start --role <roles>`), `switchboard
# migrate`, and the client commands the Helm test uses. Build from the repository root:
#   docker build -t switchboard:dev .
# CI has no Docker engine: .ci/check-image.mjs carries out these stages' steps on a directory
# tree and checks the result (what runs, what is left out, the HEALTHCHECK), so keep to the
# instructions it understands (it says which when it meets another).

# Node 24: a long-term-support line maintained until April 2028 (Node 20 reached its end of life
# in April 2026, Node 22 reaches it in April 2027). The native modules load through N-API
# (lmdb, msgpackr-extract and libsignal ship N-API builds), so a new Node needs no rebuild.
ARG NODE_VERSION=24

# Production dependencies only, installed where build tools exist in case a native module (lmdb,
# msgpackr-extract) has no prebuilt binary for the target platform; then the other platforms'
# prebuilt binaries (libsignal ships six, about 25 MB each) and the other C library's are removed.
FROM node:${NODE_VERSION}-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts/prune-native.mjs ./scripts/
# (npm's cache stays behind in this stage: only node_modules is copied to the runtime.)
RUN npm ci --omit=dev --no-audit --no-fund && node scripts/prune-native.mjs node_modules

# Every dependency, then the TypeScript build (scripts/build.mjs: tsc -p tsconfig.build.json -> dist/).
FROM node:${NODE_VERSION}-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/
COPY gen ./gen
COPY services ./services
COPY sdk ./sdk
RUN npm run build

# The runtime: compiled JavaScript and production node_modules on the slim image (no compilers),
# without npm, npx, corepack and yarn (nothing installs or builds at run time), as a non-root user.
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_DATA_DIR=/data \
    SWITCHBOARD_ADMIN_PORT=9090
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json LICENSE ./
COPY --chown=root:root bin ./bin
# The data directory is the only place the process writes (LMDB files, or nothing beyond the
# directory itself with ScyllaDB); the chart mounts a volume there.
RUN mkdir -p /data && chown 1000:1000 /data \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /opt/yarn-* \
    /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg
# The base image's "node" user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 7420 9090
# /healthz on the admin port (HTTP/1.1; the main port speaks h2c): the process answers. Node's own
# fetch, since the slim image has no curl. Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.SWITCHBOARD_ADMIN_PORT}/healthz`, { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# The V8 flags every server process runs with (services/server/node-flags.ts), on the command line:
# NODE_OPTIONS refuses --heap-growing-percent.
ENTRYPOINT ["node", "--max-semi-space-size=32", "--heap-growing-percent=200", "bin/switchboard.js"]
CMD ["start"]
