#!/usr/bin/env bash
# Checks (and where it can, installs) what the local stack and the tests need besides Python:
# Java 11+ and Google's Pub/Sub emulator. fake-gcs-server comes from PyPI with the dev requirements.
set -euo pipefail

have_emulator() {
  if [ -n "${PUBSUB_EMULATOR_BIN:-}" ] && [ -x "${PUBSUB_EMULATOR_BIN}" ]; then return 0; fi
  local root
  for root in "$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)" \
              /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk "$HOME/google-cloud-sdk"; do
    [ -n "$root" ] && [ -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] && return 0
  done
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

if ! command -v java >/dev/null 2>&1; then
  echo "prereqs: Java not found; trying apt-get install default-jre-headless" >&2
  (as_root apt-get update -qq && as_root apt-get install -y -qq default-jre-headless) || {
    echo "prereqs: please install Java 11+ (e.g. 'apt-get install default-jre-headless')" >&2; exit 1; }
fi

if ! have_emulator; then
  echo "prereqs: Google's Pub/Sub emulator not found; trying to install it" >&2
  if command -v gcloud >/dev/null 2>&1; then
    gcloud components install pubsub-emulator --quiet >/dev/null 2>&1 \
      || (as_root apt-get install -y -qq google-cloud-cli-pubsub-emulator) || true
  fi
  if ! have_emulator; then
    cat >&2 <<'MSG'
prereqs: Google's Pub/Sub emulator is required (tests and the local stack use the real emulator).
Install it with ONE of:
  gcloud components install pubsub-emulator
  sudo apt-get install google-cloud-cli-pubsub-emulator   # from Google's Cloud SDK apt repository
or point PUBSUB_EMULATOR_BIN at .../platform/pubsub-emulator/bin/cloud-pubsub-emulator
MSG
    exit 1
  fi
fi
