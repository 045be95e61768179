#!/usr/bin/env bash
# The Python the end-to-end tests drive Sluice with: the OpenAI SDK (a real
# client: `chat.completions.parse` with a Pydantic model), Anthropic's SDK
# (`messages.create` against `/v1/messages`), `jsonschema` (the reference
# validator for structured output) and `kubernetes-validate` (the Kubernetes
# schemas the Helm chart is checked against, tests/packaging.rs). A virtual environment
# under ~/.cache/sluice, made once; prints its python's path.
set -euo pipefail
root="${SLUICE_CACHE_DIR:-$HOME/.cache/sluice}/pyenv"
python="$root/bin/python"
want="openai==3.63.0 pydantic==2.13.4 jsonschema==4.26.0 anthropic==2.10.0 kubernetes-validate==1.37.0"
stamp="$root/.installed"
if [ -x "$python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "$python"
    exit 0
fi
echo "[python-env] making $root with $want (once; cached after)" >&2
rm -rf "$root"
python3 -m venv "$root" >&2
# shellcheck disable=SC2086
"$python" -m pip install --quiet --disable-pip-version-check $want >&2
echo "$want" >"$stamp"
echo "$python"
