#!/usr/bin/env bash
# Checks (and where it can, installs) what the local stack and the tests need besides Python:
# Java 11+ and Google's Pub/Sub emulator. fake-gcs-server comes from PyPI with the dev requirements.
# Before anything runs with sudo it says what it will install, and why.
set -euo pipefail

# The floor the docs state. The installed emulator (0.8.20) is Java 8 bytecode and gcloud's reference
# says JRE 7+, so 11 is on the safe side; Debian/Ubuntu's default-jre-headless is 17 or newer.
JAVA_MIN=11

have_emulator() {
  if [ -n "${PUBSUB_EMULATOR_BIN:-}" ] && [ -x "${PUBSUB_EMULATOR_BIN}" ]; then return 0; fi
  local root
  for root in "$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)" \
              /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk "$HOME/google-cloud-sdk"; do
    [ -n "$root" ] && [ -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] && return 0
  done
  return 1
}

# Runs "$@" as root, saying first what it is and that sudo may ask for a password.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; return; fi
  command -v sudo >/dev/null || return 1
  echo "prereqs: running with sudo (it may ask for your password): $*" >&2
  sudo "$@"
}

java_cmd() { if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"; else command -v java; fi; }

# The major version of `java -version`: "17.0.15" -> 17, "1.8.0_292" -> 8; empty when unreadable.
java_major() {
  local v
  v=$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1)
  case "$v" in 1.*) v=${v#1.} ;; esac
  echo "${v%%[._-]*}"
}

JAVA_HINT="install Java $JAVA_MIN or newer (Debian/Ubuntu: 'sudo apt-get install default-jre-headless'), or point JAVA_HOME at one"

if ! java_cmd >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; }; then
    echo "prereqs: Java not found; the Pub/Sub emulator needs Java $JAVA_MIN+." >&2
    echo "prereqs: will install the Debian/Ubuntu package default-jre-headless (apt-get update, then apt-get install)." >&2
    (as_root apt-get update -qq && as_root apt-get install -y -qq default-jre-headless) || {
      echo "prereqs: the install failed; $JAVA_HINT" >&2; exit 1; }
  else
    echo "prereqs: Java not found; $JAVA_HINT" >&2; exit 1
  fi
fi

JAVA=$(java_cmd)
major=$(java_major "$JAVA")
if [ -z "$major" ]; then
  echo "prereqs: warning: cannot read the version of $JAVA ('$JAVA -version'); the Pub/Sub emulator needs Java $JAVA_MIN+" >&2
elif [ "$major" -lt "$JAVA_MIN" ]; then
  echo "prereqs: $JAVA is Java $major; the Pub/Sub emulator needs Java $JAVA_MIN+: $JAVA_HINT" >&2
  exit 1
fi

if ! have_emulator; then
  if command -v gcloud >/dev/null 2>&1; then
    echo "prereqs: Google's Pub/Sub emulator not found; will install it: gcloud components install pubsub-emulator" >&2
    gcloud components install pubsub-emulator --quiet || {
      if command -v apt-get >/dev/null 2>&1; then
        echo "prereqs: gcloud could not install it (an apt-installed gcloud cannot); will install the apt package google-cloud-cli-pubsub-emulator" >&2
        as_root apt-get install -y -qq google-cloud-cli-pubsub-emulator || true
      fi
    }
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
