#!/usr/bin/env bash
# npm run package:deb [-- OUTDIR]: builds xks-proxy_<version>_<arch>.deb (default OUTDIR: dist/packages)
# from this checkout: the compiled JavaScript, the two built addons and the production
# dependencies under /opt/xks-proxy, /usr/bin/xks-proxy, the systemd unit and the conffiles.
# Needs a checkout set up by `npm ci` (its npm cache holds the dependencies) and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist/packages}")

version=$(node -p 'require("./package.json").version')
arch=$(dpkg --print-architecture)
node_arch=$(node -p process.arch)
node_abi=$(node -p process.versions.modules)

# Build what is stale: tsc, and make (incremental) for the addons.
npm run --silent build:ts
# (node-gyp is on PATH in npm scripts: run this as npm run package:deb.)
if [[ -f build/Makefile ]]; then node-gyp build --silent >/dev/null; else npm run --silent build:native >/dev/null; fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
opt=$stage/opt/xks-proxy
mkdir -p "$opt/build/Release" "$opt/dist"
cp package.json package-lock.json README.md "$opt/"
cp -r bin "$opt/"
cp -r dist/src "$opt/dist/"
find "$opt/dist" -name '*.map' -delete
cp build/Release/xks_pkcs11.node build/Release/xks_tls.node build/Release/xks_audit.node "$opt/build/Release/"

# Production dependencies only, as the lockfile pins them, from npm's cache; no scripts (the
# root's would build the addon again; the dependencies' only pick prebuilt optional binaries).
(cd "$opt" && npm ci --omit=dev --ignore-scripts --offline --no-audit --no-fund --loglevel=error >/dev/null)
rm "$opt/package-lock.json"
# uWebSockets.js ships binaries for every platform and Node ABI: keep this one (the proxy refuses
# its JavaScript fallback, so nothing else is ever loaded).
uws=$opt/node_modules/@trufflesuite/uws-js-unofficial
keep="uws_linux_${node_arch}_${node_abi}.node"
[[ -f $uws/binaries/$keep ]] || { echo "build-deb: $uws has no $keep" >&2; exit 1; }
find "$uws/binaries" -type f ! -name "$keep" -delete
find "$uws/dist" -name '*.node' -delete
rm -rf "$uws/docs"

install -D -m 0755 packaging/xks-proxy.sh "$stage/usr/bin/xks-proxy"
install -D -m 0644 deploy/systemd/xks-proxy.service "$stage/lib/systemd/system/xks-proxy.service"
install -D -m 0644 packaging/tmpfiles.conf "$stage/usr/lib/tmpfiles.d/xks-proxy.conf"
install -D -m 0644 deploy/systemd/xks-proxy.env "$stage/etc/default/xks-proxy"
# 0640 and 0750 from the start (postinst sets the group): never world-readable.
install -d -m 0750 "$stage/etc/xks-proxy"
install -m 0640 packaging/settings.toml "$stage/etc/xks-proxy/settings.toml"
install -d -m 0755 "$stage/usr/share/doc/xks-proxy"
cp docs/install.md "$stage/usr/share/doc/xks-proxy/"

mkdir -p "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/debian/control.in >"$stage/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"

mkdir -p "$out"
deb="$out/xks-proxy_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
