#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what is missing, then pytest.
# Usage: bash scripts/test.sh [--latest] [pytest args]
#   --latest  test the newest versions pyproject.toml's ranges allow (in .venv-latest) instead of the
#             lock, and list where they differ from it: drift seen on purpose, not by surprise.
if [ "${1:-}" = "--latest" ]; then
  shift
  export CLUSTER_DEPS=latest
fi
source "$(dirname "$0")/bootstrap.sh"
echo "==> Running the tests"
exec python -m pytest -q -p no:cacheprovider "$@" tests moto_tests gcp_tests azure_tests
