# syntax=docker/dockerfile:1
# The Switchboard image: one binary, every role (`switchboard start --role <roles>`), `switchboard
# migrate`, and the client commands the Helm test uses. Build from the repository root:
#   docker build -t switchboard:dev .

ARG NODE_VERSION=20.20

# Production dependencies only, installed where build tools exist in case a native module (lmdb,
# msgpackr-extract) has no prebuilt binary for the target platform.
FROM node:${NODE_VERSION}-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# Every dependency, then the TypeScript build (tsc -p tsconfig.build.json -> dist/).
FROM node:${NODE_VERSION}-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY services ./services
COPY sdk ./sdk
RUN npm run build

# The runtime: compiled JavaScript, production node_modules, a non-root user.
FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_DATA_DIR=/data
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json ./
COPY --chown=root:root bin ./bin
# The data directory is the only place the process writes (LMDB files, or nothing beyond the
# directory itself with ScyllaDB); the chart mounts a volume there.
RUN mkdir -p /data && chown 1000:1000 /data
# The base image's "node" user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 7420 9090
ENTRYPOINT ["node", "bin/switchboard.js"]
CMD ["start"]
