#!/usr/bin/env bash
# Stand up docker/compose.yaml: keys, certificates, enrollment, then one run.
# Usage (from the repository root): docker/local-federation.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")"
ROUNDS="${1:-3}"
SITES=(de fr it)
compose() { docker compose -f compose.yaml "$@"; }

compose build
# The coordinator: CA, SuperLink certificate valid for the name sites use, its keys.
compose run --rm --no-deps --entrypoint sh coordinator -c '
  set -e
  fedsilo coordinator init /home/fedsilo/coordinator --host 0.0.0.0 --cert-host coordinator
  cp /home/fedsilo/coordinator/tls/ca.pem /home/fedsilo/coordinator/keys/coordinator.pub.json /exchange/
  fedsilo data prepare --countries de,fr,it >/dev/null
  fedsilo config show --no-reference --set "federation.sites=[de, fr, it]" \
    --set federation.rounds='"$ROUNDS"' > /exchange/federation.yaml'
# Each site: its identity and SuperNode key; the public halves go to the exchange. The demo
# silos are built inside each site's own volume from the bundled corpus.
for site in "${SITES[@]}"; do
  compose run --rm --no-deps --entrypoint sh -v exchange:/exchange-rw "site-$site" -c "
    set -e
    fedsilo site init /home/fedsilo/site --site $site
    fedsilo data prepare --countries de,fr,it >/dev/null  # the federation's split; own silo used
    cp /home/fedsilo/site/keys/$site.pub.json /home/fedsilo/site/keys/$site.node-key.pub /exchange-rw/"
done
compose up -d coordinator
for site in "${SITES[@]}"; do
  compose exec coordinator fedsilo coordinator enroll /home/fedsilo/coordinator "$site" \
    --node-key "/exchange/$site.node-key.pub" --identity "/exchange/$site.pub.json"
done
compose up -d "${SITES[@]/#/site-}"
compose exec coordinator fedsilo run /home/fedsilo/coordinator --config /exchange/federation.yaml
