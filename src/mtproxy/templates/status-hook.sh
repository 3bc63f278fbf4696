#!/bin/sh
# mtproxy's section of the host's status report (`vless status`): ✓/✗ lines, exit 0 when healthy.
# Written by mtproxy-setup for one installation root; mtproxy-uninstall removes it.
# Call it from the status command, or link it into that command's drop-in directory.
if [ ! -x ${mtproxy_bin} ]; then
  echo "MTProxy"
  printf '  ✗ mtproxy: %s is missing — reinstall mtproxy and run mtproxy-setup\n' ${mtproxy_bin}
  exit 1
fi
exec ${mtproxy_bin} --root ${root} status --section "$$@"
