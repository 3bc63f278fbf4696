#!/bin/sh
# mtproxy's section of the host's status report (`vless status`): ✓/✗ lines, exit 0 when healthy.
# Written by mtproxy-setup for the installation under ${root}; mtproxy-uninstall removes it.
# Call it from the status command, or link it into that command's drop-in directory.
if [ ! -x "${mtproxy_bin}" ]; then
  echo "MTProxy"
  echo "  ✗ mtproxy: ${mtproxy_bin} is missing — reinstall mtproxy and run mtproxy-setup"
  exit 1
fi
exec "${mtproxy_bin}" --root "${root}" status --section "$$@"
