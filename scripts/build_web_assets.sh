#!/usr/bin/env bash
# Re-vendor the browser assets under app/web/static/vendor/ from the npm registry.
#
# The pages must work with no internet, so the few minified bundles they need are committed;
# this script is how they got there and how to bump them. GraphiQL 4.1.x is the last release
# that ships a UMD bundle (5.x is ESM + Monaco workers and needs a bundler); its UMD build is
# compiled against React 18's JSX runtime, and React 19 ships no UMD builds, so React stays 18.
# The GraphiQL bundle already contains its own graphql-ws client for subscriptions; the
# dashboard uses the standalone graphql-ws UMD build.
set -euo pipefail

GRAPHIQL_VERSION="${GRAPHIQL_VERSION:-4.1.2}"
REACT_VERSION="${REACT_VERSION:-18.3.1}"
GRAPHQL_WS_VERSION="${GRAPHQL_WS_VERSION:-6.4.2}"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/app/web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() { # fetch NAME@VERSION -> unpacked into $work/NAME/package
  local spec="$1" name="${1%@*}"
  mkdir -p "$work/$name"
  (cd "$work/$name" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz)
}

fetch "graphiql@$GRAPHIQL_VERSION"
fetch "react@$REACT_VERSION"
fetch "react-dom@$REACT_VERSION"
fetch "graphql-ws@$GRAPHQL_WS_VERSION"

rm -rf "$dest"
mkdir -p "$dest"
cp "$work/graphiql/package/dist/index.umd.js" "$dest/graphiql.min.js"
cp "$work/graphiql/package/dist/style.css" "$dest/graphiql.min.css"
cp "$work/react/package/umd/react.production.min.js" "$dest/react.production.min.js"
cp "$work/react-dom/package/umd/react-dom.production.min.js" "$dest/react-dom.production.min.js"
cp "$work/graphql-ws/package/umd/graphql-ws.min.js" "$dest/graphql-ws.min.js"

# Source maps are not shipped; drop the comment so devtools do not request a missing file.
sed -i '/^\/\/# sourceMappingURL=/d' "$dest/graphiql.min.js"

{
  echo "Vendored by scripts/build_web_assets.sh from the npm registry. Do not edit by hand."
  echo
  echo "graphiql@$GRAPHIQL_VERSION   -> graphiql.min.js (dist/index.umd.js), graphiql.min.css (dist/style.css)"
  echo "react@$REACT_VERSION      -> react.production.min.js (umd/)"
  echo "react-dom@$REACT_VERSION  -> react-dom.production.min.js (umd/)"
  echo "graphql-ws@$GRAPHQL_WS_VERSION  -> graphql-ws.min.js (umd/)"
  echo
  (cd "$dest" && sha256sum ./*.js ./*.css)
} >"$dest/VERSIONS.txt"

# All four are MIT licensed; the licence text must travel with the code.
{
  for pkg in graphiql react react-dom graphql-ws; do
    lic="$(ls "$work/$pkg/package/" | grep -i -m1 '^licen[cs]e' || true)"
    echo "==== $pkg ===="
    if [[ -n "$lic" ]]; then cat "$work/$pkg/package/$lic"; else echo "MIT (see package.json)"; fi
    echo
  done
} >"$dest/LICENSES.txt"

du -ch "$dest"/* | tail -1
