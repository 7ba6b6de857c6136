#!/usr/bin/env bash
# Installs the Kubernetes manifest validator tests/kubernetes.rs runs (kubernetes-validate,
# which carries the API's schemas, so it needs no cluster) into a virtualenv under
# target/tools, like the rest of the build's output.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=target/tools
if [ ! -x "$tools/bin/python" ]; then
  python3 -m venv "$tools"
fi
"$tools/bin/pip" install --quiet --disable-pip-version-check -r tests/kubernetes/requirements.txt
