#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what is missing, then pytest.
# Usage: bash scripts/test.sh [pytest args]
source "$(dirname "$0")/bootstrap.sh"
echo "==> Running the tests"
exec python -m pytest -q -p no:cacheprovider "$@" tests moto_tests gcp_tests azure_tests
