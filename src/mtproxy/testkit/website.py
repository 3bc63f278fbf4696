"""Debian's nginx as the mask site of a test: HTTPS on loopback with a certificate chain of a real site's size
(an RSA-2048 leaf and intermediate under a root that is not sent, as most public sites serve), a static page,
its own short timeouts, every wait bounded. Used where a prober compares the proxy's answers with the site's."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WAIT = 10.0

PAGE = b"<!doctype html><html><head><title>Welcome</title></head><body><h1>It works</h1></body></html>\n"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (str(Path("/usr/sbin/nginx")) if Path("/usr/sbin/nginx").exists() else None)


def write_chain(directory: Path, domain: str) -> tuple[Path, Path]:
    """Root -> intermediate -> leaf, all RSA-2048 with SHA-256 (fixed-size signatures: every handshake's
    flight has the same length). Returns (leaf + intermediate PEM, leaf key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Trust Services"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey,
              ca: bool, sans: list[str]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=90))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                                  critical=False)
                   # what a public CA puts in every certificate: where to check it and which policy it follows
                   .add_extension(x509.AuthorityInformationAccess([
                       x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                              x509.UniformResourceIdentifier("http://ocsp.test-trust.example")),
                       x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                              x509.UniformResourceIdentifier("http://certs.test-trust.example/r1.der")),
                   ]), critical=False)
                   .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                       [x509.UniformResourceIdentifier("http://crl.test-trust.example/r1.crl")], None, None, None)]),
                       critical=False)
                   .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
                       x509.ObjectIdentifier("2.23.140.1.2.1"), ["https://test-trust.example/cps"])]),
                       critical=False))
        if sans:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]),
                                             critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(signer, hashes.SHA256())

    root_key, mid_key, leaf_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3))
    root_name, mid_name = name("Test Root X1"), name("Test Intermediate R1")
    mid = issue(mid_name, mid_key, root_name, root_key, True, [])
    leaf = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]), leaf_key, mid_name, mid_key, False,
                 [domain, f"www.{domain}"])
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + mid.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return chain, key


@dataclass(frozen=True)
class SiteTimeouts:
    """nginx's own waits (its defaults are 60 s and 75 s; a test shortens them to see them end)."""

    header: float = 1.0  # client_header_timeout: also bounds the TLS handshake and the first request
    keepalive: float = 1.0  # keepalive_timeout: an idle connection after a response


class NginxSite:
    """`nginx -p DIR -c DIR/nginx.conf` serving https://`domain` on 127.0.0.1:`port`, one worker."""

    def __init__(self, directory: Path, port: int, domain: str, timeouts: SiteTimeouts = SiteTimeouts()) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx; scripts/install-test-deps)")
        self.port = port
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        chain, key = write_chain(directory, domain)
        www = directory / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_bytes(PAGE)
        temp = " ".join(f"{kind}_temp_path {directory / kind};" for kind in
                        ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        config = directory / "nginx.conf"
        # run as root (a test in a namespace), the worker stays root: it must read the test's private directory
        user = "user root;" if os.geteuid() == 0 else ""
        config.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
    access_log {directory / "access.log"};
    {temp}
    default_type text/html;
    client_header_timeout {int(timeouts.header * 1000)}ms;
    keepalive_timeout {int(timeouts.keepalive * 1000)}ms;
    server {{
        listen 127.0.0.1:{port} ssl default_server;
        server_name {domain} www.{domain};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {www};
    }}
}}
""")
        self.log = directory / "nginx.out"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(config), "-e",
                                          str(directory / "error.log")], stdout=out, stderr=subprocess.STDOUT)
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited:\n{self.log.read_text()}\n{self.error_log()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"nginx did not listen on {self.port} in {WAIT:g} s:\n{self.error_log()}")

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)  # graceful: lets the worker finish, as a deploy would
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(WAIT)
