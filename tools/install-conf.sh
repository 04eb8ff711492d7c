#!/bin/sh
# meson install script: installs the default svdllmd.conf unless one is
# already there, so that re-running `meson install` (an upgrade) keeps the
# administrator's settings. $1: source file, $2: absolute sysconfdir.
set -eu
dest="${DESTDIR:-}$2/svdllmd.conf"
if [ -e "$dest" ]; then
  echo "Keeping existing $dest"
else
  echo "Installing $1 to $dest"
  install -D -m 0644 "$1" "$dest"
fi
