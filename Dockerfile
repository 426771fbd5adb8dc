# syntax=docker/dockerfile:1
# tokenmeter: `tokenmeter serve` on the current Node LTS, as a non-root user (DESIGN.md §2).
#   docker build -t tokenmeter .
#   docker run -e TOKENMETER_UPSTREAM=https://gateway.example/v1 -p 127.0.0.1:4000:4000 -v tm-data:/data tokenmeter
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: compile TypeScript; install better-sqlite3 (its prebuilt binary, else compiled) ----
FROM ${NODE_IMAGE} AS build
# The compiler is a fallback: better-sqlite3 fetches its prebuilt binary and compiles only where that
# download is unreachable (a mirror-only build network).
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# node-gyp uses the headers shipped in the image instead of downloading them.
ENV npm_config_nodedir=/usr/local
COPY package.json package-lock.json ./
# --ignore-scripts: the root `prepare` script (tsc) needs sources not copied yet; the one native
# dependency is then installed explicitly (prebuilt, or compiled as a fallback).
RUN npm ci --ignore-scripts && npm rebuild better-sqlite3
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev --ignore-scripts

# ---- runtime: production dependencies, compiled JS, presets ----
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    TOKENMETER_HOST=0.0.0.0 \
    TOKENMETER_PORT=4000 \
    TOKENMETER_DB=/data/tokenmeter.db
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY bin ./bin
COPY prices ./prices
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 4000
# The slim image has no curl: Node's own fetch checks /healthz on the configured port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.TOKENMETER_PORT||4000)+'/healthz',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "bin/tokenmeter.js"]
CMD ["serve"]
