"""The proxy behind the VPN stack's HAProxy on port 443: one marked block of SNI rules in the frontend that
serves the port, one marked backend section, checked with HAProxy's own `haproxy -c` before the file is
replaced, then a reload; the old file comes back when the check or the reload fails.

HAProxy routes TCP by the SNI of the TLS ClientHello (`req.ssl_sni`) without terminating TLS, so the proxy's
fake-TLS clients, whose hello names the proxy's fake-TLS domain, reach the proxy on a loopback port, and
everyone else (Xray Reality, the stack's sites) is routed as before. `send-proxy-v2` puts a PROXY protocol
header naming the real client before the client's bytes.

Both blocks are whole lines between `# BEGIN mtproxy …` and `# END mtproxy` comments, inserted as
"\\n<block>" at the end of an existing line: taking exactly that text away gives back the file byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..store import write_atomic
from .haproxy_sni import MaskChoice, site_mask
from .runner import CommandError, Runner

BACKEND = "mtproxy"
BEGIN = "# BEGIN mtproxy"
END = "# END mtproxy"
_BEGIN_LINE = f"{BEGIN} (added by `mtproxy setup --behind-haproxy`; `mtproxy uninstall` removes it)"
_BLOCK = re.compile(r"\n[ \t]*" + re.escape(BEGIN) + r"\b[^\n]*(?:\n(?![ \t]*" + re.escape(END) + r"\b)[^\n]*)*"
                    r"\n[ \t]*" + re.escape(END) + r"\b[^\n]*")
# Where the VPN stack keeps HAProxy's file (its Docker set-up), then the distribution's own.
STACK_CANDIDATES = ("config/haproxy.cfg", "config/haproxy/haproxy.cfg", "haproxy/haproxy.cfg", "haproxy.cfg")
SYSTEM_CONFIG = "haproxy/haproxy.cfg"  # under /etc
_SECTIONS = frozenset({"global", "defaults", "frontend", "backend", "listen", "resolvers", "userlist", "peers",
                       "mailers", "program", "http-errors", "ring", "cache", "crt-store", "traces"})
_ROUTING = re.compile(r"^\s*(use_backend|default_backend)\b")
_HELLO_ACCEPT = re.compile(r"^\s*tcp-request\s+content\s+accept\s+if\s+\{\s*req(?:_ssl_hello_type|\.ssl_hello_type)"
                           r"\s+1\s*\}")
_INSPECT_DELAY = re.compile(r"^\s*tcp-request\s+inspect-delay\b")
CHECK_TIMEOUT = 60.0
RELOAD_TIMEOUT = 60.0


class HaproxyError(Exception):
    """The HAProxy integration cannot be done or undone; `todo` says what the operator can do."""

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo


@dataclass(frozen=True)
class Located:
    path: Path
    why: str  # said to the operator: which file and why this one


def locate(explicit: Path | None, root: Path, etc: Path = Path("/etc")) -> Located:
    """The HAProxy config to edit: the explicit path, else the one candidate that exists (the stack's under
    `root`, else /etc/haproxy/haproxy.cfg). Several candidates, or none, is an error: never a guess."""
    if explicit is not None:
        if not explicit.is_file():
            raise HaproxyError(f"the HAProxy config {explicit} does not exist", "pass the right --haproxy-config")
        return Located(explicit, "given with --haproxy-config")
    found = [path for path in candidates(root, etc) if path.is_file()]
    if not found:
        tried = ", ".join(str(p) for p in candidates(root, etc))
        raise HaproxyError(f"no HAProxy config found (looked for {tried})", "pass --haproxy-config FILE")
    if len(found) > 1:
        raise HaproxyError(f"several HAProxy configs exist: {', '.join(map(str, found))}",
                           "pass --haproxy-config FILE to say which one serves port 443")
    where = "the VPN stack's" if root in found[0].parents else "the system's"
    return Located(found[0], f"{where} HAProxy config, the only one of the usual places that exists")


def candidates(root: Path, etc: Path = Path("/etc")) -> list[Path]:
    return [root / rel for rel in STACK_CANDIDATES] + [etc / SYSTEM_CONFIG]


def stack_config(root: Path, etc: Path = Path("/etc")) -> Path | None:
    """The one HAProxy config of the usual places, or None (the wizard asks only when there is one)."""
    try:
        return locate(None, root, etc).path
    except HaproxyError:
        return None


@dataclass(frozen=True)
class Frontend:
    name: str
    header: int  # index of the `frontend`/`listen` line
    end: int  # index after its last line
    first_routing: int | None  # the first use_backend/default_backend line, if any
    has_inspect_delay: bool
    has_hello_accept: bool
    indent: str


def _sections(lines: Sequence[str]) -> list[tuple[str, str, int, int]]:
    """(keyword, name, first line, end) of every section."""
    starts = []
    for index, line in enumerate(lines):
        words = line.split()
        if words and words[0] in _SECTIONS and not line.startswith("#"):
            starts.append((words[0], words[1] if len(words) > 1 else "", index))
    return [(kind, name, start, starts[i + 1][2] if i + 1 < len(starts) else len(lines))
            for i, (kind, name, start) in enumerate(starts)]


def _binds_port(line: str, port: int) -> bool:
    words = line.split()
    if not words or words[0] != "bind":
        return False
    return any(re.fullmatch(rf"(?:.*:)?{port}(?:-\d+)?", address) is not None
               for word in words[1:2] for address in word.split(","))


def _mode(lines: Sequence[str], start: int, end: int) -> str | None:
    for line in lines[start + 1:end]:
        words = line.split()
        if len(words) >= 2 and words[0] == "mode":
            return words[1]
    return None


def find_frontend(text: str, port: int) -> Frontend:
    """The frontend (or listen section) that binds `port` in TCP mode; an error names what is missing."""
    lines = text.split("\n")
    sections = _sections(lines)
    binding = [s for s in sections if s[0] in ("frontend", "listen")
               and any(_binds_port(line, port) for line in lines[s[2] + 1:s[3]])]
    if not binding:
        raise HaproxyError(f"no frontend in the HAProxy config binds port {port}",
                           "pass the config of the HAProxy that serves that port with --haproxy-config")
    if len(binding) > 1:
        raise HaproxyError(f"several frontends bind port {port}: {', '.join(s[1] for s in binding)}",
                           "keep one frontend on that port")
    _, name, start, end = binding[0]
    defaults_mode = None
    for other_kind, _, other_start, other_end in sections:
        if other_kind == "defaults" and other_start < start:
            defaults_mode = _mode(lines, other_start, other_end) or defaults_mode
    mode = _mode(lines, start, end) or defaults_mode or "tcp"  # HAProxy's own default mode is tcp
    if mode != "tcp":
        raise HaproxyError(f"the frontend {name} on port {port} is in mode {mode}, not tcp",
                           "SNI routing to the proxy needs a `mode tcp` frontend")
    body = lines[start + 1:end]
    while body and not body[-1].strip():  # blank lines before the next section are not the frontend's
        body.pop()
        end -= 1
    routing = next((start + 1 + i for i, line in enumerate(body) if _ROUTING.match(line)), None)
    indent = next((re.match(r"[ \t]*", line).group(0) for line in body  # type: ignore[union-attr]
                   if line.strip() and not line.lstrip().startswith("#")), "    ")
    return Frontend(name, start, end, routing, any(_INSPECT_DELAY.match(line) for line in body),
                    any(_HELLO_ACCEPT.match(line) for line in body), indent)


def has_block(text: str) -> bool:
    return _BLOCK.search(text) is not None


def without_block(text: str) -> str:
    """The file as it was before `with_block`: every marked block taken away, nothing else."""
    return _BLOCK.sub("", text)


def with_block(text: str, domains: Sequence[str], backend_port: int, public_port: int = 443,
               domain_base: str | None = None) -> str:
    """The file with our rules for `domains` (and every name under `domain_base`, the secrets' own host
    names) in the frontend of `public_port` and our backend section; a block already there is replaced
    (re-running updates it)."""
    if not domains and not domain_base:
        raise HaproxyError("no fake-TLS domain to route", "HAProxy routes by SNI: use an ee secret with a domain")
    base = without_block(text)
    if re.search(rf"^\s*backend\s+{BACKEND}\s*$", base, re.MULTILINE):
        raise HaproxyError(f"the HAProxy config already has a backend named {BACKEND} outside our marked block",
                           "rename or remove it, then run again")
    frontend = find_frontend(base, public_port)
    lines = base.split("\n")
    pad = frontend.indent
    rules = [f"{pad}{_BEGIN_LINE}"]
    if not frontend.has_inspect_delay:
        rules.append(f"{pad}tcp-request inspect-delay 5s")
    if not frontend.has_hello_accept:
        rules.append(f"{pad}tcp-request content accept if {{ req_ssl_hello_type 1 }}")
    if domain_base:
        base = _checked([domain_base])[0]
        # `-m end` with the leading dot: every name under the base, never the base itself nor `xusers.…`
        rules.append(f"{pad}use_backend {BACKEND} if {{ req.ssl_sni -i -m end .{base} }}")
        domains = [d for d in domains if not d.lower().endswith(f".{base}")]
    rules += [f"{pad}use_backend {BACKEND} if {{ req.ssl_sni -i {domain} }}" for domain in _checked(domains)]
    rules.append(f"{pad}{END}")
    backend = [_BEGIN_LINE, f"backend {BACKEND}", f"{pad}mode tcp",
               f"{pad}server {BACKEND} 127.0.0.1:{backend_port} send-proxy-v2", END]
    # After the line before the first routing rule (so our SNI match is tried first), else the frontend's end.
    after = (frontend.first_routing if frontend.first_routing is not None else frontend.end) - 1
    lines[after] += "\n" + "\n".join(rules)
    # The backend section after the file's last line (before a final newline, so it stays final).
    last = len(lines) - 2 if len(lines) > 1 and lines[-1] == "" else len(lines) - 1
    lines[last] += "\n" + "\n".join(backend)
    return "\n".join(lines)


def _checked(domains: Sequence[str]) -> list[str]:
    for domain in domains:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", domain):
            raise HaproxyError(f"{domain!r} is not a domain name HAProxy can match", "use a plain host name")
    return list(dict.fromkeys(d.lower() for d in domains))


@dataclass(frozen=True)
class Control:
    """How to check and reload this HAProxy: argument lists; `{file}` in the check stands for the file to
    check (and `{dir}` for its directory, to mount it into a container)."""

    check: tuple[str, ...]
    reload: tuple[str, ...]

    def to_json(self) -> dict[str, list[str]]:
        return {"check": list(self.check), "reload": list(self.reload)}


@dataclass(frozen=True)
class Integration:
    """The proxy behind this HAProxy: the file that gets our block, why that file, the frontend's port
    (the one clients dial, in links), and how to check and reload it."""

    config: Path
    why: str
    public_port: int
    control: Control


def plan(runner: Runner, explicit: Path | None, root: Path, etc: Path, public_port: int, check_command: str | None,
         reload_command: str | None) -> Integration:
    """Everything checked before setup changes anything: the file is found and readable, has a TCP frontend
    on `public_port`, and there is a way to check and reload it."""
    located = locate(explicit, root, etc)
    find_frontend(without_block(read_config(located.path)), public_port)
    return Integration(located.path, located.why, public_port,
                       control(runner, located.path, check_command, reload_command))


def control(runner: Runner, config: Path, check: str | None, reload: str | None) -> Control:
    """The check and reload commands: as given (shell words), else the host's haproxy binary and
    `systemctl reload haproxy`; an error says what is missing instead of guessing."""
    if check:
        check_argv = tuple(shlex.split(check))
    elif runner.available("haproxy"):
        check_argv = ("haproxy", "-c", "-f", "{file}")
    else:
        raise HaproxyError("the haproxy program is not installed on this host, so the edited config cannot be "
                           "checked", "install haproxy, or pass --haproxy-check 'docker run --rm -v {dir}:{dir}:ro "
                           "IMAGE haproxy -c -f {file}'")
    if reload:
        reload_argv = tuple(shlex.split(reload))
    elif runner.available("systemctl") and runner.run(["systemctl", "is-active", "--quiet", "haproxy"],
                                                      check=False, mutates=False).ok:
        reload_argv = ("systemctl", "reload", "haproxy")
    else:
        raise HaproxyError(f"no running haproxy service to reload for {config}",
                           "pass --haproxy-reload, e.g. 'docker kill -s HUP <haproxy container>'")
    return Control(check_argv, reload_argv)


def _fill(argv: Sequence[str], file: Path) -> list[str]:
    return [word.replace("{file}", str(file)).replace("{dir}", str(file.parent)) for word in argv]


def check(runner: Runner, ctl: Control, file: Path) -> None:
    """HAProxy's own verdict on `file`; raises HaproxyError with its message."""
    try:
        runner.run(_fill(ctl.check, file), timeout=CHECK_TIMEOUT, mutates=False)
    except CommandError as exc:
        detail = exc.result.stderr.strip() or exc.result.stdout.strip() or exc.problem
        lines = [line for line in detail.splitlines() if "ALERT" in line] or detail.splitlines()[-3:]
        raise HaproxyError(f"HAProxy refuses the edited config ({' / '.join(lines)[:600]})",
                           "the file was left as it was; fix it by hand or report the problem") from None


def replace_checked(runner: Runner, path: Path, new_text: str, ctl: Control) -> bool:
    """Check `new_text` as a sibling file, move it over `path` atomically, reload HAProxy; on any failure
    the previous file is put back (and reloaded). False when the text is already the file's."""
    try:
        old = path.read_bytes()
        st = path.stat()
    except OSError as exc:
        raise HaproxyError(f"cannot read the HAProxy config {path}: {exc.strerror}", "run as root") from None
    new = new_text.encode("utf-8")
    if new == old:
        return False
    if runner.dry_run:
        runner.run(_fill(ctl.reload, path))  # recorded, not run
        return True
    candidate = path.with_name(f".{path.name}.mtproxy-check")
    try:
        write_atomic(candidate, new, st.st_mode & 0o7777)
        with contextlib.suppress(OSError):
            os.chown(candidate, st.st_uid, st.st_gid)
        check(runner, ctl, candidate)
        write_atomic(path, new, st.st_mode & 0o7777)  # the bytes just checked; the old owner is kept
    except OSError as exc:
        raise HaproxyError(f"cannot write the HAProxy config {path}: {exc.strerror}", "run as root") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
    try:
        runner.run(_fill(ctl.reload, path), timeout=RELOAD_TIMEOUT)
    except CommandError as exc:
        write_atomic(path, old, st.st_mode & 0o7777)
        runner.run(_fill(ctl.reload, path), check=False, timeout=RELOAD_TIMEOUT)
        raise HaproxyError(f"reloading HAProxy failed ({exc.problem}); the previous config was put back",
                           "check the reload command (--haproxy-reload) and HAProxy's logs") from None
    return True


def add(runner: Runner, path: Path, domains: Sequence[str], backend_port: int, ctl: Control,
        public_port: int = 443, domain_base: str | None = None) -> bool:
    """Route `domains` (and names under `domain_base`) to the proxy on 127.0.0.1:`backend_port`; True when
    the file changed."""
    text = read_config(path)
    return replace_checked(runner, path, with_block(text, domains, backend_port, public_port, domain_base), ctl)


def stack_mask(text: str, public_port: int, name: str, not_sites: Mapping[int, str], own_port: int) -> MaskChoice:
    """The stack's own site for `name` as the frontend of `public_port` routes it without our block (see
    haproxy_sni); the config's problems (no such frontend, not tcp) are the answer's reason, not errors."""
    base = without_block(text)
    try:
        frontend = find_frontend(base, public_port)
    except HaproxyError as exc:
        return MaskChoice(None, exc.what)
    return site_mask(base, _sections(base.split("\n")), (frontend.header + 1, frontend.end), name, not_sites,
                     own_port)


def remove(runner: Runner, path: Path, ctl: Control) -> bool:
    """Take our marked blocks away (and reload); False when there were none (or the file is gone)."""
    if not path.exists():
        return False
    text = read_config(path)
    if not has_block(text):
        return False
    return replace_checked(runner, path, without_block(text), ctl)


def read_config(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise HaproxyError(f"cannot read the HAProxy config {path}: {exc.strerror}",
                           "run as root, or pass the right --haproxy-config") from None
    except UnicodeDecodeError:
        raise HaproxyError(f"the HAProxy config {path} is not UTF-8 text", "pass the right --haproxy-config") from None
