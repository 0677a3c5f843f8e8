# Sourced by demo.sh and test.sh: makes a fresh Debian machine ready, idempotently and quickly.
# - Debian packages the project needs (python3-venv, rsync, openssh-server, debootstrap), via apt-get when missing
# - .venv with exactly the versions of launcher/locks/dev.txt (hash-checked), rebuilt when the lock changes
# - with CLUSTER_DEPS=latest (test.sh --latest): .venv-latest with the newest versions pyproject's ranges allow
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"

need_apt=()
command -v rsync >/dev/null || need_apt+=(rsync)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
[ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)  # rootfs of the container-node test harness
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> Installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# A lock that no longer matches pyproject.toml stops here, in one line, before anything is installed.
"$PYTHON" scripts/locks.py check

pip_install() {  # into $VENV, the log kept; its tail shown on failure
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >> "$VENV/install.log" 2>&1; then
    tail -n 30 "$VENV/install.log" >&2
    echo "pip install failed; the whole log is in $VENV/install.log" >&2
    exit 1
  fi
}

if [ "${CLUSTER_DEPS:-locked}" = latest ]; then
  VENV="$REPO/.venv-latest"
  echo "==> Updating .venv-latest to the newest versions pyproject.toml allows (not the lock)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip_install --upgrade pip
  pip_install --upgrade --upgrade-strategy eager -e ".[test]"
  "$VENV/bin/python" scripts/locks.py drift
else
  VENV="$REPO/.venv"
  stamp="$VENV/.installed-$(cat pyproject.toml launcher/locks/dev.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "==> Creating .venv from launcher/locks/dev.txt: cluster-launcher, its dependencies and test set (about a minute)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_install --require-hashes --no-deps -r launcher/locks/dev.txt
    pip_install --no-deps --no-build-isolation -e .  # the build tools come from the lock too
    touch "$stamp"
  fi
fi
export PATH="$VENV/bin:$PATH"
