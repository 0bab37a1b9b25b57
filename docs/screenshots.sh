#!/usr/bin/env bash
# Refreshes the dashboard screenshots in docs/ (ui-services.png, ui-services-dark.png,
# ui-routes.png, ui-routes-gateway.png, ui-gateways.png, ui-certificates.png, ui-events.png,
# ui-explain.png): runs the Chromium browser test of tests/ui.rs, which
# starts a real `portico up`, fills it through the API and saves each view
# as it checks it. Needs chromium, chromium-driver and python3-selenium
# (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PORTICO_UI_SCREENSHOTS="$PWD/docs" cargo test --test ui -- dashboard_shows_the_registry_live_in_chromium --nocapture
ls -l docs/ui-*.png
