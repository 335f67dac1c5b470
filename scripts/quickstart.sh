#!/usr/bin/env bash
# Installs what xks-proxy needs (SoftHSM2, PKCS#11 headers, npm packages), makes a local
# SoftHSM2 token with demo keys in ./dev-hsm (first run only) and starts the proxy on
# http://127.0.0.1:8000. Ctrl-C stops it. For trials, never for production.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
[[ -e /usr/include/p11-kit-1/p11-kit/pkcs11.h ]] || need+=(libp11-kit-dev)
command -v g++ >/dev/null || need+=(g++ make python3)
command -v curl >/dev/null || need+=(curl)
command -v pkcs11-tool >/dev/null || need+=(opensc) # pkcs11-tool: the tests delete keys with it, as an HSM admin would
command -v strace >/dev/null || need+=(strace)       # the tests read the mTLS terminator's socket options with it
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  echo "Installing ${need[*]} with apt-get ..."
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

npm ci --no-audit --no-fund

if [[ ! -f dev-hsm/settings.toml ]]; then
  node bin/xks-proxy.js init-dev dev-hsm
else
  echo "Reusing the token and settings in ./dev-hsm (delete the folder to start over):"
  grep -E '^(sigv4_access_key_id|sigv4_secret_access_key|uri_path_prefix)' dev-hsm/settings.toml
fi

export SOFTHSM2_CONF="$PWD/dev-hsm/softhsm2.conf"
export XKS_PROXY_SETTINGS_TOML="$PWD/dev-hsm/settings.toml"
exec node bin/xks-proxy.js
