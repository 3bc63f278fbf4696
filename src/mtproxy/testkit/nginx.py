"""Debian's nginx as a test's TLS 1.3 web site, with a certificate chain of a real site's size made by the
openssl command line (an RSA-4096 root and intermediate, an RSA-2048 leaf with a CA's usual extensions; the
site sends leaf and intermediate, about 3.4 KB of PEM, as many public sites do): the mask site whose first
flight the fake one imitates. Every wait bounded."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

WAIT = 10.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_chain(directory: Path, host: str) -> tuple[Path, Path]:
    """A three-level RSA-2048 chain for `host` in `directory`: (leaf + intermediate PEM, the leaf's key)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def issue(name: str, subject: str, issuer: str | None, extensions: str, bits: int) -> None:
        _openssl("req", "-new", "-newkey", f"rsa:{bits}", "-nodes", "-keyout", str(d / f"{name}.key"),
                 "-subj", subject, "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(extensions)
        signer = ["-signkey", str(d / f"{name}.key")] if issuer is None else [
            "-CA", str(d / f"{issuer}.pem"), "-CAkey", str(d / f"{issuer}.key"), "-CAcreateserial"]
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-days", "30", "-sha256", *signer,
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))

    ca = "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n"
    issued = ("subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
              "authorityInfoAccess=OCSP;URI:http://ocsp.example.net,caIssuers;URI:http://crt.example.net/ca.der\n"
              "crlDistributionPoints=URI:http://crl.example.net/ca.crl\ncertificatePolicies=2.23.140.1.2.1\n")
    issue("root", "/C=US/O=Example Trust/CN=Example Root CA", None, ca, 4096)
    issue("intermediate", "/C=US/O=Example Trust/CN=Example TLS RSA CA 2026", "root", ca + issued, 4096)
    issue("leaf", f"/CN={host}", "intermediate",
          "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{host},DNS:www.{host}\n" + issued, 2048)
    chain = d / "chain.pem"
    chain.write_text((d / "leaf.pem").read_text() + (d / "intermediate.pem").read_text())
    return chain, d / "leaf.key"


class NginxSite:
    """`nginx -g 'daemon off;'` serving TLS 1.3 only on 127.0.0.1:`port` with `chain`; `prefer_server_ciphers`
    makes it choose its own order (AES-256 first, OpenSSL's) over the client's."""

    def __init__(self, directory: Path, port: int, chain: Path, key: Path, *,
                 prefer_server_ciphers: bool = False, wait: float = WAIT) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light; scripts/install-test-deps)")
        self.port, self.wait, self.prefer_server_ciphers = port, wait, prefer_server_ciphers
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "error.log"
        config = directory / "nginx.conf"
        config.write_text(f"""
pid {directory}/nginx.pid;
error_log {self.log} info;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name _;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers {"on" if prefer_server_ciphers else "off"};
        location / {{ return 200 "hello\\n"; }}
    }}
}}
""")
        self.proc = subprocess.Popen([binary, "-p", str(directory), "-e", str(self.log), "-c", str(config),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited:\n{self.log.read_text() if self.log.exists() else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not listen in {self.wait} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, the master removes its pid file
        try:
            self.proc.wait(self.wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(self.wait)
