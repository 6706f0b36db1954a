#!/usr/bin/env bash
# Runs uv as installed by scripts/bootstrap.sh (as a module of the system Python, so no
# PATH change is needed on a fresh machine).
exec "${PYTHON:-python3}" -m uv "$@"
