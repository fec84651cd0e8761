#!/usr/bin/env bash
# The lock files pin every runtime and dev dependency with hashes (requirements/*.lock).
#
#   scripts/check_lock.sh --offline   CI: the locks were made from the current pyproject.toml
#                                     (each lock records pyproject's hash; no network, no install)
#   scripts/check_lock.sh             weekly: re-resolve against today's PyPI into a scratch
#                                     virtualenv, install, run the whole suite; prints the diff.
#                                     Green → `scripts/check_lock.sh --update` and commit the new
#                                     locks deliberately. Red → the diff names the upgrade to hold back
#                                     (add an upper bound in pyproject.toml, with the reason).
#   scripts/check_lock.sh --update    re-resolve and write requirements/*.lock (needs uv: pip install uv)
set -euo pipefail
cd "$(dirname "$0")/.."

UV_ARGS=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
  --index-strategy unsafe-best-match --no-header --quiet)
# the hash of pyproject's dependency lists (what the locks are made from), not of the whole file
stamp() {
  python -c 'import hashlib, json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(hashlib.sha256(json.dumps([p["dependencies"], p["optional-dependencies"]], sort_keys=True).encode()).hexdigest())'
}

compile() {  # compile OUTDIR
  local out="$1"
  mkdir -p "$out"
  uv pip compile pyproject.toml "${UV_ARGS[@]}" -o "$out/runtime.lock.tmp"
  uv pip compile pyproject.toml --extra dev "${UV_ARGS[@]}" -o "$out/dev.lock.tmp"
  for f in runtime dev; do
    {
      echo "# pyproject.toml dependencies sha256: $(stamp)"
      echo "# made by scripts/check_lock.sh --update (uv pip compile, $f); do not edit by hand"
      cat "$out/$f.lock.tmp"
    } >"$out/$f.lock"
    rm "$out/$f.lock.tmp"
  done
}

case "${1:-}" in
  --offline)
    for f in requirements/runtime.lock requirements/dev.lock; do
      if ! head -1 "$f" | grep -q "$(stamp)"; then
        echo "$f was not made from this pyproject.toml: run scripts/check_lock.sh --update and commit it"
        exit 1
      fi
    done
    echo "locks match pyproject.toml"
    ;;
  --update)
    compile requirements
    echo "requirements/*.lock updated: review 'git diff requirements/' and commit"
    ;;
  "")
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    compile "$scratch/locks"
    diff -u <(grep -E '^[a-z0-9].*==' requirements/dev.lock) <(grep -E '^[a-z0-9].*==' "$scratch/locks/dev.lock") \
      && echo "no upgrades since the lock was made"
    python -m venv "$scratch/venv"
    "$scratch/venv/bin/python" -m pip install -q --require-hashes -r "$scratch/locks/dev.lock"
    "$scratch/venv/bin/python" -m pip install -q --no-deps -e .
    CI=true "$scratch/venv/bin/python" -m pytest -q -x
    echo "the re-resolved locks pass: run scripts/check_lock.sh --update and commit requirements/"
    ;;
  *)
    echo "usage: scripts/check_lock.sh [--offline|--update]" >&2
    exit 2
    ;;
esac
