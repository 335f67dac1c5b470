#!/bin/sh
# /usr/bin/xks-proxy of the Debian package: runs the proxy in /opt/xks-proxy with the service's
# environment (/etc/default/xks-proxy: the settings file, SOFTHSM2_CONF, ...) for every variable the
# caller has not set, so `xks-proxy check-config` checks the file the service uses.
set -eu
if [ -r /etc/default/xks-proxy ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    name=${line%%=*}
    case $name in '' | *[!A-Za-z0-9_]*) continue ;; esac
    printenv "$name" >/dev/null || export "$line"
  done </etc/default/xks-proxy
fi
exec /usr/bin/node /opt/xks-proxy/bin/xks-proxy.js "$@"
