#!/usr/bin/env bash
# Tests of the Python module: builds the abi3 wheel with maturin, installs it
# into a virtualenv (target/py-venv, created on first use), then runs the
# pytest suite, the examples in examples/python/ (run, and checked with
# `mypy --strict`) and `stubtest` on the stubs. Any failure fails the
# script; nothing is skipped.
#
# Usage: crates/python/scripts/test.sh [--debug] [PYTEST ARGS…]
#   --debug   build an unoptimized wheel (faster to build, for iterating)
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

profile=(--release)
if [[ "${1:-}" == "--debug" ]]; then
  profile=()
  shift
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "missing $python (Python 3.9 or later)"; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || { echo "$python is older than 3.9"; exit 1; }

venv=$root/target/py-venv
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
say "test tools (maturin, pytest, pytest-asyncio, mypy)"
"$venv/bin/pip" install -q --disable-pip-version-check maturin pytest pytest-asyncio mypy

say "maturin build ${profile[*]:-(debug)}"
rm -f "$root"/target/wheels/opsconductor-*.whl
"$venv/bin/maturin" build "${profile[@]}" -m crates/python/Cargo.toml -o target/wheels
wheels=("$root"/target/wheels/opsconductor-*.whl)
[[ ${#wheels[@]} -eq 1 && -f ${wheels[0]} ]] || { echo "expected one wheel, got: ${wheels[*]}"; exit 1; }

say "installing ${wheels[0]##*/}"
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall "${wheels[0]}"

# Tests must not inherit a developer's configuration.
unset OPSC_DATABASE_URL OPSC_MASTER_KEY OPSC_MASTER_KEY_FILE OPSC_MASTER_PASSPHRASE OPSC_LOG || true

say "pytest"
# Run from the tests' directory so `import opsconductor` is the installed wheel,
# never the source tree.
(cd crates/python && "$venv/bin/python" -m pytest "$@")

say "examples/python/"
for example in examples/python/*.py; do
  echo "--- $example"
  (cd "$root/target" && "$venv/bin/python" "$root/$example" >/dev/null)
done

say "mypy --strict examples/python/"
"$venv/bin/python" -m mypy --strict examples/python/

say "stubtest (the stubs match the built module)"
(cd "$root/target" && "$venv/bin/python" -m mypy.stubtest opsconductor \
  --allowlist "$root/crates/python/stubtest-allowlist.txt")

say "the wheel in a fresh virtualenv (nothing but pip and the wheel)"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
"$python" -m venv "$fresh/venv"
"$fresh/venv/bin/pip" install -q --disable-pip-version-check --no-index "${wheels[0]}"
(cd "$fresh" && "$fresh/venv/bin/python" - <<'PY'
import opsconductor
with opsconductor.Conductor("sqlite://fresh.db", workers=1) as oc:
    run = oc.exec("echo fresh-venv-ok")
    run.wait(timeout=60)
    lines = [line.text for line in run.logs()]
    assert run.status == "succeeded", run.status
    assert any("fresh-venv-ok" in t for t in lines), lines
print("fresh venv: import, run and logs work")
PY
)

say "python: all green"
