#!/usr/bin/env bash
# The wire contract must never break silently: checks proto/ against the image of the latest
# release in proto/releases/ with the rules in buf.yaml's `breaking` section (FILE for the
# public switchboard.v1, WIRE plus no deleted services or RPCs for switchboard.internal.v1).
# docs/integrations.md ("Compatibility") explains the rules and how a release updates the
# baseline. Run from anywhere: `bash .ci/buf-breaking.sh`. Exits non-zero on a breaking change.
set -euo pipefail
cd "$(dirname "$0")/.."

# The buf CLI pinned in package.json (works offline; nothing here talks to the BSR).
buf=node_modules/.bin/buf
if [ ! -x "$buf" ]; then
  echo "buf-breaking: $buf is missing; run 'npm ci' first." >&2
  exit 2
fi

# The newest release image by version order (v0.10.0 sorts after v0.9.0).
baseline=$(find proto/releases -maxdepth 1 -name 'switchboard-v*.binpb' -printf '%f\n' | sort -V | tail -n 1)
if [ -z "$baseline" ]; then
  echo "buf-breaking: no baseline image in proto/releases/ (see docs/integrations.md)." >&2
  exit 2
fi

echo "buf breaking: proto/ against proto/releases/$baseline"
if ! "$buf" breaking --against "proto/releases/$baseline" --error-format text; then
  cat >&2 <<MSG

buf-breaking: the change above breaks the wire contract of the last release ($baseline).
Partners' generated stubs or a rolling upgrade of a mixed-version mesh would break.
Add a new field, message or RPC instead, deprecate the old one, and reserve numbers and
names of anything removed. A deliberate break needs a new package (switchboard.v2).
MSG
  exit 1
fi
echo "buf breaking: no breaking changes."
