"""Host integrations: one command runner; Docker, systemd, UFW, fail2ban, HAProxy and the install record."""
