#!/bin/sh
# Rebuild the block editor's vendored front-end files from npm (versions in package.json).
# `make run` never needs this: the built files are committed.
set -eu
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/campaigns/static/campaigns/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version() { python3 -c "import json,sys; print(json.load(open('$out/package.json'))['dependencies'][sys.argv[1]])" "$1"; }
cd "$work"
for name in sortablejs squire-rte dompurify; do
  npm pack --silent "$name@$(version "$name")" >/dev/null
  mkdir "$name" && tar xzf "$name"-*.tgz -C "$name" --strip-components=1
done
cp sortablejs/Sortable.min.js "$out/sortable.min.js"
cp sortablejs/LICENSE "$out/sortable.LICENSE"
cp squire-rte/dist/squire.js "$out/squire.js"
cp squire-rte/LICENSE "$out/squire.LICENSE"
cp dompurify/dist/purify.min.js "$out/purify.min.js"
cp dompurify/LICENSE "$out/purify.LICENSE"
echo "vendored into $out"
