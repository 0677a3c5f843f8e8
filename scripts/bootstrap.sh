# Sourced by demo.sh and test.sh: makes a fresh Debian machine ready, idempotently and quickly.
# - Debian packages the project needs (python3-venv, rsync, openssh-server, debootstrap), via apt-get when missing
# - .venv with the project and its test dependencies, re-installed only when pyproject.toml changed
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

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> Creating .venv and installing cluster-launcher with its dependencies (about a minute)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
         .venv/bin/python -m pip install --disable-pip-version-check -e ".[test]"; } > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "pip install failed; the whole log is in $REPO/.venv/install.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export PATH="$REPO/.venv/bin:$PATH"
