"""CURVE key files: this machine's key pair, the keys allowed to connect, and ``leptonrt keys``.

::

    DIR/                0700   default $XDG_CONFIG_HOME/leptonrt/keys, else ~/.config/leptonrt/keys
    ├── public.key      0644   the public key alone: hand it to clients (``--server-key``) or servers
    ├── secret.key      0600   public and secret key; refused when group or others can open it
    ├── authorized/     0700   NAME.key: a client's public key allowed to connect, under the name it is known by
    └── hosts/          0700   NAME.key: a host's, allowed to join (``leptonrt join``) and to connect

Files are ZeroMQ's certificate format (``zmq.auth.load_certificate`` reads them). Every
file is written to a temporary name and renamed, so a reader sees the old file or the new
one, and ``AuthorizedKeys`` notices a change by the directory's signature: ``keys allow``
and ``keys revoke`` take effect on a running broker without a restart. The sockets that use
these keys are armed in ``leptonrt.curve``. A name is allowed once, as a client or as a host:
only a host's key reaches the actors' channel, where the datasets and the gradients are
(a client's may submit jobs, never receive another user's data).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")   # the brief's [A-Za-z0-9_.-]{1,64}, minus hidden files
KEY_LINE = re.compile(rb"""^\s*(public|secret)-key\s*=\s*["']?([^"'\s]*)["']?\s*$""")
Z85_KEY = re.compile(rb"[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40}")
MAX_KEY_FILE_BYTES = 16 * 1024   # a certificate is a few hundred bytes; anything bigger is not one
RACY_S = 0.05    # seconds: a file changed this recently may change again within one timestamp tick (<= 10 ms
                 # on Linux) and its mtime would not show it; RESCAN_S bounds what any clock does beyond
CLIENTS, HOSTS = "authorized", "hosts"   # the directories of the keys allowed, by role
RESCAN_S = 1.0   # seconds: the longest a key file edited in place (no directory change) goes unnoticed


@dataclass(frozen=True)
class KeyPair:
    """One party's CURVE keys, each the 40-character z85 text of 32 bytes."""

    public: bytes
    secret: bytes = field(repr=False)   # never printed, never logged


def default_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "leptonrt" / "keys"


def keys_dir(arg: str | os.PathLike | None) -> Path:
    """The key directory a ``--keys`` option names, or the default one."""
    return Path(arg).expanduser() if arg else default_dir()


# -- reading ---------------------------------------------------------------------------------

def _read_key_file(path: Path, private: bool = False, follow: bool = True) -> bytes:
    """The bytes of a small regular file. ``private``: refused unless only its owner, us, can
    open it. Links are followed only where ``follow`` (a file the user names on the command line)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if private or not follow else 0)   # no FIFO wedges us
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise ConfigError(f"cannot read key file {path}: {why}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file")
        if private and info.st_uid != os.getuid():
            raise ConfigError(f"secret key {path} belongs to uid {info.st_uid}, not to you")
        if private and info.st_mode & 0o077:
            raise ConfigError(f"secret key {path} is open to group or others ({stat.filemode(info.st_mode)}): "
                              f"chmod 600 {path}")
        data = b""
        while len(data) <= MAX_KEY_FILE_BYTES and (chunk := os.read(fd, MAX_KEY_FILE_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file")
    return data


def valid_key(text: bytes) -> bool:
    """Whether ``text`` is the z85 text of a 32-byte CURVE key."""
    if not Z85_KEY.fullmatch(text):
        return False
    try:
        return len(z85.decode(text)) == 32
    except struct.error:   # five characters worth more than 2**32 - 1
        return False


def _parse(data: bytes, path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate's text; ConfigError when it is not one."""
    found: dict[bytes, list[bytes]] = {b"public": [], b"secret": []}
    for line in data.splitlines():
        match = KEY_LINE.match(line)
        if match:
            found[match[1]].append(match[2])
    publics, secrets = found[b"public"], found[b"secret"]
    if len(publics) != 1 or len(secrets) > 1 or not all(map(valid_key, publics + secrets)):
        raise ConfigError(f"{path} is not a CURVE key file (expected one public-key line of 40 z85 characters)")
    return publics[0], secrets[0] if secrets else None


def read_public_key(path: str | os.PathLike, follow: bool = True) -> bytes:
    """The public key in a public key file (a server's public.key for ``--server-key``, or a
    client's for ``keys allow``); a file that also holds a secret key is refused."""
    path = Path(path)
    public, secret = _parse(_read_key_file(path, follow=follow), path)
    if secret is not None:
        raise ConfigError(f"{path} holds a secret key: give the public.key file instead, and keep that one private")
    return public


def _check_dir(path: Path, what: str = "key directory") -> os.stat_result:
    """A directory we own that no one else can write to, or a ConfigError saying what to do."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ConfigError(f"no keys at {path}: run `leptonrt keys init --keys {path}`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{what} {path} must be a directory owned by you")
    if info.st_mode & 0o022:
        raise ConfigError(f"{what} {path} is writable by others ({stat.filemode(info.st_mode)}): chmod 700 {path}")
    return info


def load_keypair(directory: str | os.PathLike | None = None) -> KeyPair:
    """This party's keys from ``DIR/secret.key``, after checking DIR and the file are private."""
    directory = keys_dir(directory)
    _check_dir(directory)
    path = directory / "secret.key"
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"no secret key at {path}: run `leptonrt keys init --keys {directory}`")
    public, secret = _parse(_read_key_file(path, private=True), path)
    if secret is None or zmq.curve_public(secret) != public:
        raise ConfigError(f"{path} does not hold a matching public and secret key: run `leptonrt keys init --force`")
    if (directory / "public.key").exists() and read_public_key(directory / "public.key") != public:
        raise ConfigError(f"{directory / 'public.key'} does not match {path}: rewrite it or run `keys init --force`")
    return KeyPair(public, secret)


# -- writing ---------------------------------------------------------------------------------

def _certificate(public: bytes, secret: bytes | None = None) -> str:
    kind = "secret" if secret else "public"
    lines = [f"#   ZeroMQ CURVE {kind} certificate, written by leptonrt on {datetime.now(timezone.utc):%Y-%m-%d}",
             "#   " + ("keep this file private (mode 0600)" if secret else "hand this file to the other side"),
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # not NAME.key: readers skip it
    try:
        _write_replacing(tmp, path, text, mode)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _write_replacing(tmp: Path, path: Path, text: str, mode: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(fd, mode)   # os.open's mode is narrowed by the umask
            f.write(text)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)   # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) and make it 0700; refused if someone else owns it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
            return path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"cannot make the key directory {path}: {exc.strerror}") from None
    raise ConfigError(f"{path} must be a directory owned by you")


def init(directory: str | os.PathLike | None = None, force: bool = False) -> KeyPair:
    """Write a new key pair to DIR (0700), with empty DIR/authorized/ and hosts/; existing keys are kept
    unless ``force``, since every peer that trusts the old public key would be locked out."""
    directory = keys_dir(directory)
    existing = [p.name for p in (directory / "secret.key", directory / "public.key") if os.path.lexists(p)]
    if existing and not force:
        raise ConfigError(f"{directory} already holds {' and '.join(existing)}; refusing to replace them "
                          "(peers that trust the old public key would be locked out): use --force to replace them")
    _private_dir(directory)
    _private_dir(directory / "authorized")
    _private_dir(directory / "hosts")
    public, secret = zmq.curve_keypair()
    _write_atomic(directory / "secret.key", _certificate(public, secret), 0o600)
    _write_atomic(directory / "public.key", _certificate(public), 0o644)
    return KeyPair(public, secret)


def _authorized_path(directory: Path, name: str, host: bool = False) -> Path:
    if not NAME.fullmatch(name):
        raise ConfigError(f"a key's name is 1 to 64 of A-Z a-z 0-9 _ . - (not starting with a dot), got {name!r}")
    return directory / (HOSTS if host else CLIENTS) / f"{name}.key"


def allow(directory: str | os.PathLike | None, name: str, public_key_file: str | os.PathLike,
          force: bool = False, host: bool = False) -> bytes:
    """Allow the public key in ``public_key_file`` to connect, as ``name`` (a host's, allowed to
    join, with ``host``); returns the key."""
    directory = keys_dir(directory)
    target = _authorized_path(directory, name, host)
    key = read_public_key(public_key_file)
    _check_dir(directory)
    if host:
        _private_dir(directory / HOSTS)   # a key directory made before hosts could join has none
    _check_dir(target.parent, "directory of allowed keys")
    known = {k: n for n, k in {**authorized(directory), **authorized(directory, hosts=True)}.items()}
    if known.get(key, name) != name:
        raise ConfigError(f"that key is already allowed as {known[key]!r}: `leptonrt keys revoke {known[key]}` first")
    other = _authorized_path(directory, name, not host)
    if other.exists():
        raise ConfigError(f"{name!r} is already allowed as a {'client' if host else 'host'}: revoke it first "
                          f"(a name is a client or a host, not both)")
    if target.exists() and not force:
        raise ConfigError(f"a key named {name!r} is already allowed: revoke it first, or use --force to replace it")
    _write_atomic(target, _certificate(key), 0o644)
    return key


def revoke(directory: str | os.PathLike | None, name: str) -> None:
    """Remove ``name`` from the allowed keys, client or host; a running broker refuses it from
    its next message."""
    directory = keys_dir(directory)
    for target in (_authorized_path(directory, name), _authorized_path(directory, name, host=True)):
        try:
            target.unlink()
            return
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot remove {target}: {exc.strerror}") from None
    raise ConfigError(f"no key named {name!r} is allowed (see `leptonrt keys list`)")


def authorized(directory: str | os.PathLike | None = None, hosts: bool = False) -> dict[str, bytes]:
    """NAME -> public key of every valid file in DIR/authorized (DIR/hosts with ``hosts``;
    invalid ones are left out)."""
    return allowed_keys(directory, hosts=hosts).snapshot()


def allowed_keys(directory: str | os.PathLike | None, clients: bool = True, hosts: bool = True):
    """The keys a server admits: clients', hosts', or both (an ``AuthorizedKeys`` or ``AnyOf``)."""
    directory = keys_dir(directory)
    sets = ([AuthorizedKeys(directory / CLIENTS)] if clients else []) + \
        ([AuthorizedKeys(directory / HOSTS, optional=True)] if hosts else [])
    return sets[0] if len(sets) == 1 else AnyOf(*sets)


# -- the allowed set, as a running server sees it ----------------------------------------------

class AuthorizedKeys:
    """The public keys in one ``authorized/`` directory, kept current cheaply: one ``stat`` of
    the directory per question, a re-scan when its signature changes, when it changed too
    recently to trust its timestamp, or every ``rescan_s``. Thread-safe: the ZAP thread and the
    service's event loop both ask. An unsafe or unreadable directory allows no one."""

    def __init__(self, directory: str | os.PathLike, rescan_s: float = RESCAN_S,
                 clock: Callable[[], float] = time.monotonic, optional: bool = False) -> None:
        self.directory = Path(directory)
        self.optional = optional   # a missing directory allows no one, and is no error (hosts/)
        self.rescan_s = rescan_s   # seconds between re-scans when nothing else says it changed
        self._clock = clock        # monotonic seconds
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._scanned_at = -float("inf")
        self._files: dict[str, tuple] = {}      # name -> (file signature, key or None, problem or None)
        self._names: dict[bytes, str] = {}      # z85 public key -> name
        self.problems: tuple[str, ...] = ()     # why a file or the directory is ignored

    def check(self) -> None:
        """Raise ConfigError when the directory is missing (unless optional) or others could write to it."""
        if not (self.optional and not os.path.lexists(self.directory)):
            _check_dir(self.directory, "directory of allowed keys")

    def name_of(self, public: bytes) -> str | None:
        """The name a z85 public key is allowed as, or None."""
        with self._lock:
            self._refresh()
            return self._names.get(public)

    def snapshot(self) -> dict[str, bytes]:
        with self._lock:
            self._refresh()
            return {name: key for key, name in self._names.items()}

    def _refresh(self) -> None:
        try:
            info = os.stat(self.directory)
        except FileNotFoundError as exc:
            return self._fail(None if self.optional else f"{self.directory}: {exc.strerror}")
        except OSError as exc:
            return self._fail(f"{self.directory}: {exc.strerror}")
        signature = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_mode, info.st_uid)
        racy = time.time() - info.st_mtime < RACY_S
        if signature == self._signature and not racy and self._clock() - self._scanned_at < self.rescan_s:
            return
        try:
            _check_dir(self.directory, "directory of allowed keys")
            self._scan()
        except (ConfigError, OSError) as exc:
            return self._fail(str(exc))
        self._signature, self._scanned_at = signature, self._clock()

    def _fail(self, why: str | None) -> None:
        self._signature, self._files, self._names, self.problems = None, {}, {}, (why,) if why else ()

    def _scan(self) -> None:
        files, names = {}, {}
        with os.scandir(self.directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = entry.name.removesuffix(".key")
                if entry.name.endswith(".key") and NAME.fullmatch(name):
                    files[name] = self._read(entry, self._files.get(name))
        problems = [why for _sig, _key, why in files.values() if why]
        for name, (_sig, key, _why) in files.items():
            if key is not None and names.setdefault(key, name) != name:
                problems.append(f"{name}.key repeats the key of {names[key]}.key; only {names[key]} is used")
        self._files, self._names, self.problems = files, names, tuple(problems)

    @staticmethod
    def _read(entry: os.DirEntry, cached: tuple | None) -> tuple[tuple, bytes | None, str | None]:
        """(file signature, key or None, why it is ignored or None); a file unchanged since the
        last scan, and not changed too recently to tell, is not read again."""
        info = entry.stat(follow_symlinks=False)
        signature = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        if cached is not None and cached[0] == signature and time.time() - info.st_mtime >= RACY_S:
            return cached
        try:
            return signature, read_public_key(entry.path, follow=False), None   # a link could be anyone's file
        except ConfigError as exc:
            return signature, None, str(exc)


class AnyOf:
    """Keys allowed by any of several sets (a server that admits clients and hosts alike);
    a name is looked up in each in turn (``allow`` keeps names apart)."""

    def __init__(self, *sets: AuthorizedKeys) -> None:
        self.sets = sets

    def check(self) -> None:
        for allowed in self.sets:
            allowed.check()

    def name_of(self, public: bytes) -> str | None:
        return next((name for allowed in self.sets if (name := allowed.name_of(public)) is not None), None)

    def snapshot(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for allowed in reversed(self.sets):
            out.update(allowed.snapshot())
        return out

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(p for allowed in self.sets for p in allowed.problems)
