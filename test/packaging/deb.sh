#!/usr/bin/env bash
# The Debian package on this machine (as root; CI runs it from .ci/run): build it, dpkg -i it,
# check what it installed, run `xks-proxy doctor` and the unit's ExecStart line by hand (no
# systemd here) against a SoftHSM2 token, answer /ping and a signed encrypt, stop it with
# SIGTERM, dpkg --purge it and check that nothing is left. Prints one line when it passes;
# on a failure, the failed check and the end of the log, and exits 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
work=$(mktemp -d)
log=$work/log
checks=0
pid=
installed_here=
marker=

fail() {
  echo "packaging (deb): FAILED: $*"
  tail -n 25 "$log" 2>/dev/null | sed 's/^/  | /'
  exit 1
}
check() { # check DESCRIPTION COMMAND...: runs COMMAND, fails with DESCRIPTION unless it succeeds
  local what=$1
  shift
  "$@" >>"$log" 2>&1 || fail "$what"
  checks=$((checks + 1))
}
equals() { [[ "$1" == "$2" ]] || { echo "expected '$2', got '$1'" >>"$log"; return 1; }; }
refuses() { # refuses MESSAGE COMMAND...: COMMAND exits non-zero and prints MESSAGE
  local message=$1 out
  shift
  if out=$("$@" 2>&1); then echo "succeeded: $out" >>"$log"; return 1; fi
  echo "$out" >>"$log"
  grep -qF -- "$message" <<<"$out"
}
gone() { ! [[ -e $1 || -L $1 ]] || { echo "$1 is still there" >>"$log"; return 1; }; }
remove_kept() { # what purge keeps on purpose when /var/lib/xks-proxy is not empty
  rm -rf /var/lib/xks-proxy
  deluser --system --quiet xks-proxy >>"$log" 2>&1 || true
  marker=
}
cleanup() {
  [[ -z $pid ]] || kill -TERM "$pid" 2>/dev/null || true
  [[ -z $installed_here ]] || dpkg --purge xks-proxy >>"$log" 2>&1 || true
  [[ -z $marker ]] || remove_kept
  rm -rf "$work"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || fail "needs root (dpkg -i)"
if dpkg-query -W xks-proxy >/dev/null 2>&1 || getent passwd xks-proxy >/dev/null; then
  fail "xks-proxy is already installed here (package or user): not touching it"
fi

# Build.
deb=$(npm run --silent package:deb -- "$work/out" 2>>"$log") || fail "npm run package:deb"
check "the .deb holds none of our tests or test tools" bash -c \
  "! dpkg-deb -c '$deb' | grep -v /node_modules/ | grep -E 'faulty_pkcs11|p11attr|native-test|/test/|/bench/|\\.map\$'"

# Install.
installed_here=1
check "dpkg -i" dpkg -i "$deb"
unit=/lib/systemd/system/xks-proxy.service
check "the user xks-proxy, no login shell" equals "$(getent passwd xks-proxy | cut -d: -f7)" /usr/sbin/nologin
check "settings.toml 0640 root:xks-proxy" equals "$(stat -c '%a %U %G' /etc/xks-proxy/settings.toml)" "640 root xks-proxy"
check "/etc/xks-proxy 0750 root:xks-proxy" equals "$(stat -c '%a %U %G' /etc/xks-proxy)" "750 root xks-proxy"
check "/var/log/xks-proxy 0750 xks-proxy" equals "$(stat -c '%a %U %G' /var/log/xks-proxy)" "750 xks-proxy xks-proxy"
check "the conffiles" equals "$(dpkg-query -W -f='${Conffiles}' xks-proxy | awk '{print $1}' | sort | xargs)" "/etc/default/xks-proxy /etc/xks-proxy/settings.toml"
check "the unit" test -f "$unit"
if command -v systemd-tmpfiles >/dev/null; then
  check "the tmpfiles.d rule parses" systemd-tmpfiles --clean /usr/lib/tmpfiles.d/xks-proxy.conf
fi
check "xks-proxy --version" equals "$(xks-proxy --version)" "$(node -p 'require("./package.json").version')"
# The shipped settings.toml lacks the credential and the PIN: the proxy refuses it, naming the key.
check "check-config refuses the unedited settings.toml" refuses "sigv4_access_key_id: missing key" \
  runuser -u xks-proxy -- xks-proxy check-config

# A SoftHSM2 token with keys (made as the service user, in a directory it owns) and settings.
hsm=$work/hsm
install -d -o xks-proxy -g xks-proxy -m 0700 "$hsm"
chmod 0711 "$work"
check "init-dev as xks-proxy" runuser -u xks-proxy -- xks-proxy init-dev "$hsm/dev"
port=$(node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
sed -e "s/^port = .*/port = $port/" -e "s/^port_http_ping = .*/port_http_ping = $port/" \
  -e 's/^xks_key_id_set = .*/xks_key_id_set = ["foo"]/' -e 's/^is_file_writer_enabled = .*/is_file_writer_enabled = true/' -e 's|^directory = .*|directory = "/var/log/xks-proxy"|' \
  "$hsm/dev/settings.toml" >/etc/xks-proxy/settings.toml # cat-like: keeps the conffile's owner and mode
echo "SOFTHSM2_CONF=$hsm/dev/softhsm2.conf" >>/etc/default/xks-proxy
check "the caller's environment wins over /etc/default/xks-proxy" refuses /nonexistent/settings.toml \
  env XKS_PROXY_SETTINGS_TOML=/nonexistent/settings.toml xks-proxy check-config
check "settings.toml still 0640 root:xks-proxy" equals "$(stat -c '%a %U %G' /etc/xks-proxy/settings.toml)" "640 root xks-proxy"
# An upgrade (here: the same package again) keeps the edited conffiles and their modes.
edited=$(sha256sum /etc/xks-proxy/settings.toml /etc/default/xks-proxy)
check "dpkg -i again (upgrade)" dpkg -i "$deb"
check "the upgrade kept the edited conffiles" equals "$(sha256sum /etc/xks-proxy/settings.toml /etc/default/xks-proxy)" "$edited"
check "the upgrade kept settings.toml 0640 root:xks-proxy" equals "$(stat -c '%a %U %G' /etc/xks-proxy/settings.toml)" "640 root xks-proxy"

# The installed doctor on the installed settings (the demo key foo only: init-dev's other demo keys
# lack a usage on purpose, which doctor fails): ok or warnings (exit 0 or 1), no failure.
check "xks-proxy doctor as xks-proxy (ok or warn)" bash -c 'runuser -u xks-proxy -- xks-proxy doctor; [[ $? -le 1 ]]'

# The unit's ExecStart line, run by hand as systemd would: its User, WorkingDirectory and
# EnvironmentFile, nothing else from this shell's environment.
unit_value() { sed -n "s/^$1=//p" "$unit" | head -n 1; }
exec_start=$(unit_value ExecStart)
user=$(unit_value User)
envfile=$(unit_value EnvironmentFile)
mapfile -t unit_env < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "${envfile#-}")
(cd "$(unit_value WorkingDirectory)" && exec env -i PATH=/usr/bin:/bin "${unit_env[@]}" \
  setpriv --reuid="$user" --regid="$user" --init-groups -- $exec_start) >"$work/proxy.out" 2>&1 &
pid=$!
# Ready when it logs "listening" (to stdout, and to its file in /var/log/xks-proxy).
for _ in $(seq 1 150); do
  cat "$work/proxy.out" /var/log/xks-proxy/xks-proxy.log* 2>/dev/null | grep -q ' listening url=' && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
cat "$work/proxy.out" >>"$log"
check "the ExecStart line serves /ping" curl -fsS "http://127.0.0.1:$port/ping"
akid=$(sed -n 's/^sigv4_access_key_id = "\(.*\)"$/\1/p' /etc/xks-proxy/settings.toml)
secret=$(sed -n 's/^sigv4_secret_access_key = "\(.*\)"$/\1/p' /etc/xks-proxy/settings.toml)
prefix=$(sed -n 's/^uri_path_prefix = "\(.*\)"$/\1/p' /etc/xks-proxy/settings.toml)
body='{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/Alice","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/deb","kmsOperation":"Encrypt","kmsRequestId":"deb-1"},"plaintext":"cGFja2FnZWQ=","encryptionAlgorithm":"AES_GCM"}'
check "a signed encrypt" bash -c "curl -fsS --aws-sigv4 'aws:amz:us-east-1:kms-xks-proxy' --user '$akid:$secret' \
  -H 'content-type: application/json' -d '$body' 'http://127.0.0.1:$port$prefix/kms/xks/v1/keys/foo/encrypt' | grep -q '\"ciphertext\"'"
check "the service user owns its log file in /var/log/xks-proxy" bash -c \
  "find /var/log/xks-proxy -type f -user xks-proxy -name 'xks-proxy.log*' | grep -q ."
# init-dev's [audit] section (its directory set to /var/log/xks-proxy above): the encrypt's record.
check "the audit trail has the encrypt's record" bash -c \
  "grep -l '\"kmsRequestId\":\"deb-1\"' /var/log/xks-proxy/xks-audit.*.jsonl | xargs -r stat -c %U | grep -qx xks-proxy"
check "the proxy runs as xks-proxy" equals "$(stat -c %U "/proc/$pid") $(cat "/proc/$pid/comm")" "xks-proxy node"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
tail -n 5 "$work/proxy.out" >>"$log"
check "SIGTERM: exit 0" equals "$status" 0

# Purge: nothing of the package is left.
rm -rf "$hsm"
check "dpkg --purge" dpkg --purge xks-proxy
installed_here=
check "no package" bash -c '! dpkg-query -W -f="\${Status}" xks-proxy 2>/dev/null | grep -q installed'
check "no user" bash -c '! getent passwd xks-proxy'
check "no group" bash -c '! getent group xks-proxy'
for path in /opt/xks-proxy /usr/bin/xks-proxy /etc/xks-proxy /etc/default/xks-proxy /var/log/xks-proxy /var/lib/xks-proxy \
  "$unit" /usr/lib/tmpfiles.d/xks-proxy.conf /usr/share/doc/xks-proxy; do
  check "$path removed" gone "$path"
done

# Purge keeps a non-empty /var/lib/xks-proxy (it may hold HSM tokens) and the user owning it.
installed_here=1
check "dpkg -i (second time)" dpkg -i "$deb"
runuser -u xks-proxy -- touch /var/lib/xks-proxy/token-here
marker=1
purge_out=$(dpkg --purge xks-proxy 2>&1) || fail "dpkg --purge (second time): $purge_out"
installed_here=
check "purge keeps a non-empty /var/lib/xks-proxy, says so" grep -qF "kept /var/lib/xks-proxy" <<<"$purge_out"
check "... and keeps its files and the user" test -f /var/lib/xks-proxy/token-here -a "$(stat -c %U /var/lib/xks-proxy/token-here)" = xks-proxy
check "... but removes the logs" gone /var/log/xks-proxy
remove_kept
check "cleaned up by hand" bash -c '! getent passwd xks-proxy && ! getent group xks-proxy'

echo "packaging (deb): $checks checks passed in $((SECONDS - started)) s ($(du -k "$deb" 2>/dev/null | cut -f1 || echo '?') kB .deb)"
