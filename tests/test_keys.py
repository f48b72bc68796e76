"""CURVE keys, the ZAP authenticator and its self-test.

Unit tests (files, the allowed set, ZAP answers) touch no socket; socket tests use real zmq
on 127.0.0.1 with ``bind_to_random_port``, close every socket with linger 0 and terminate
every context with a timeout.
"""

import asyncio
import contextlib
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from leptonrt import curve, keys
from leptonrt.cli import main
from leptonrt.errors import ConfigError, InternalError

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")

WAIT_MS = 3000   # the longest a test waits for something that must happen (never for what must not)


# -- helpers ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def terminate(ctx: zmq.Context, timeout_s: float = 5.0) -> None:
    done = threading.Thread(target=ctx.term, daemon=True)
    done.start()
    done.join(timeout_s)
    assert not done.is_alive(), "a zmq context did not terminate: a socket was left open"


class Net:
    def __init__(self) -> None:
        self.ctx, self.opened = zmq.Context(), []

    def socket(self, kind, ctx=None):
        sock = (ctx or self.ctx).socket(kind)
        sock.linger = 0
        self.opened.append(sock)
        return sock


@pytest.fixture
def net():
    """A zmq context whose sockets (made with ``net.socket``) are closed with linger 0 after the test."""
    net = Net()
    yield net
    for sock in reversed(net.opened):
        sock.close(linger=0)
    terminate(net.ctx)


@pytest.fixture
def server_dir(tmp_path):
    directory = tmp_path / "server"
    return directory, keys.init(directory)


@pytest.fixture
def client_dir(tmp_path):
    directory = tmp_path / "client"
    return directory, keys.init(directory)


@pytest.fixture
def served(net, server_dir):
    """An armed ROUTER on 127.0.0.1 and its authenticator: (router, endpoint, server keys, authenticator)."""
    directory, pair = server_dir
    auth = curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")).start()
    router = net.socket(zmq.ROUTER)
    curve.arm_server(router, pair, auth)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    yield router, f"tcp://127.0.0.1:{port}", pair, auth
    router.close(linger=0)
    auth.close()


def dealer(net, endpoint, server_public=None, own=None, ctx=None):
    """A DEALER connecting to ``endpoint`` (CURVE when ``own`` is given) and its monitor."""
    sock = net.socket(zmq.DEALER, ctx)
    if own is not None:
        curve.arm_client(sock, server_public, own)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    net.opened.append(monitor)
    sock.connect(endpoint)
    return sock, monitor


def handshake(monitor) -> tuple[int, int]:
    """The first handshake event of a connection: (event, value)."""
    assert monitor.poll(WAIT_MS), "no handshake verdict"
    event = recv_monitor_message(monitor)
    return event["event"], event["value"]


ADMITTED = (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
REFUSED_BY_ZAP = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)


def round_trip(router, sock, auth, body=b"ping"):
    """Send ``body``; returns the name the authenticator gives its sender (a reply goes back if any)."""
    sock.send(body)
    assert router.poll(WAIT_MS), "the message did not arrive"
    identity, frame = router.recv_multipart(copy=False)
    assert frame.bytes == body
    name = auth.sender(frame)
    if name is not None:
        router.send_multipart([identity.bytes, b"hello " + name.encode()])
        assert sock.poll(WAIT_MS) and sock.recv() == b"hello " + name.encode()
    return name


def cli(*args):
    return subprocess.run([sys.executable, "-m", "leptonrt", "keys", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- key files -------------------------------------------------------------------------------

def test_init_writes_a_private_key_pair_that_zmq_reads(tmp_path):
    old_umask = os.umask(0o077)   # public.key is 0644 whatever the umask
    try:
        pair = keys.init(tmp_path / "k")
    finally:
        os.umask(old_umask)
    d = tmp_path / "k"
    assert (mode(d), mode(d / "authorized"), mode(d / "secret.key"), mode(d / "public.key")) == (0o700, 0o700, 0o600, 0o644)
    assert list((d / "authorized").iterdir()) == []
    assert zmq.auth.load_certificate(d / "public.key") == (pair.public, None)
    assert zmq.auth.load_certificate(d / "secret.key") == (pair.public, pair.secret)
    assert zmq.curve_public(pair.secret) == pair.public
    assert keys.load_keypair(d) == pair
    assert pair.secret.decode() not in repr(pair)


def test_init_twice_is_refused_and_keeps_the_keys_unless_forced(tmp_path):
    first = keys.init(tmp_path)
    with pytest.raises(ConfigError, match="refusing to replace"):
        keys.init(tmp_path)
    assert keys.load_keypair(tmp_path) == first
    done = cli("init", "--keys", tmp_path)
    assert done.returncode == 78 and "--force" in done.stderr and "Traceback" not in done.stderr
    assert keys.init(tmp_path, force=True) != first


def test_keys_default_to_the_users_config_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.keys_dir(None) == tmp_path / "xdg" / "leptonrt" / "keys"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.keys_dir(None) == tmp_path / "home" / ".config" / "leptonrt" / "keys"


def test_show_prints_the_public_key_and_its_file(server_dir, capsys):
    directory, pair = server_dir
    assert main(["keys", "show", "--keys", str(directory)]) == 0
    out = capsys.readouterr().out
    assert pair.public.decode() in out and str(directory / "public.key") in out
    assert pair.secret.decode() not in out


def test_allow_list_and_revoke_manage_the_allowed_names(server_dir, client_dir, tmp_path, capsys):
    directory, _ = server_dir
    other = keys.init(tmp_path / "other")
    assert main(["keys", "allow", "alice", str(client_dir[0] / "public.key"), "--keys", str(directory)]) == 0
    assert main(["keys", "allow", "bob.laptop", str(tmp_path / "other" / "public.key"), "--keys", str(directory),
                 "--host"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--keys", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"alice  client  {client_dir[1].public.decode()}",
                                                    f"bob.laptop  host  {other.public.decode()}"]
    assert zmq.auth.load_certificate(directory / "authorized" / "alice.key") == (client_dir[1].public, None)
    assert main(["keys", "revoke", "alice", "--keys", str(directory)]) == 0
    assert keys.authorized(directory) == {} and keys.authorized(directory, hosts=True) == {"bob.laptop": other.public}
    assert main(["keys", "revoke", "alice", "--keys", str(directory)]) == 78
    assert main(["keys", "revoke", "bob.laptop", "--keys", str(directory)]) == 0
    assert keys.authorized(directory, hosts=True) == {}


def test_a_name_is_a_client_or_a_host_and_only_hosts_reach_the_actors_channel(server_dir, client_dir, tmp_path):
    directory, _ = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    keys.init(tmp_path / "host")
    with pytest.raises(ConfigError, match="'alice' is already allowed as a client"):
        keys.allow(directory, "alice", tmp_path / "host" / "public.key", host=True)
    with pytest.raises(ConfigError, match="already allowed as 'alice'"):   # the same key under another name
        keys.allow(directory, "alice-host", client_dir[0] / "public.key", host=True)
    host = keys.allow(directory, "rack1", tmp_path / "host" / "public.key", host=True)
    service, actors = keys.allowed_keys(directory), keys.allowed_keys(directory, clients=False)
    assert service.name_of(client_dir[1].public) == "alice" and service.name_of(host) == "rack1"
    assert actors.name_of(client_dir[1].public) is None and actors.name_of(host) == "rack1"


def test_a_key_directory_made_before_hosts_could_join_admits_its_clients_and_no_host(server_dir, client_dir):
    directory, _ = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    (directory / "hosts").rmdir()
    service, actors = keys.allowed_keys(directory), keys.allowed_keys(directory, clients=False)
    service.check()
    actors.check()
    assert service.name_of(client_dir[1].public) == "alice" and actors.snapshot() == {} and not actors.problems


def test_allowing_a_name_or_a_key_twice_is_refused(server_dir, client_dir, tmp_path):
    directory, _ = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    with pytest.raises(ConfigError, match="already allowed as 'alice'"):
        keys.allow(directory, "alice2", client_dir[0] / "public.key")
    keys.init(tmp_path / "new")
    with pytest.raises(ConfigError, match="already allowed"):
        keys.allow(directory, "alice", tmp_path / "new" / "public.key")
    keys.allow(directory, "alice", tmp_path / "new" / "public.key", force=True)
    assert keys.authorized(directory) == {"alice": keys.read_public_key(tmp_path / "new" / "public.key")}


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "..", "a" * 65, "é", "a b", "x\n"])
def test_allow_refuses_a_bad_name(server_dir, client_dir, name, capsys):
    directory, _ = server_dir
    assert main(["keys", "allow", name, str(client_dir[0] / "public.key"), "--keys", str(directory)]) == 78
    assert "name" in capsys.readouterr().err
    assert list((directory / "authorized").iterdir()) == []


def test_a_name_of_64_characters_is_allowed(server_dir, client_dir):
    keys.allow(server_dir[0], "a" * 64, client_dir[0] / "public.key")
    assert list(keys.authorized(server_dir[0])) == ["a" * 64]


BAD_FILES = {
    "empty": b"",
    "garbage": b"\x00\xff" * 100,
    "short key": b'curve\n    public-key = "abc"\n',
    "not z85": b'curve\n    public-key = "' + b"~" * 40 + b'"\n',
    "z85 too big": b'curve\n    public-key = "' + b"#" * 40 + b'"\n',
    "two keys": b'curve\n    public-key = "' + b"a" * 40 + b'"\n    public-key = "' + b"b" * 40 + b'"\n',
    "huge": b"# " + b"x" * 20_000 + b'\n    public-key = "' + b"a" * 40 + b'"\n',
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_allow_refuses_a_file_that_is_not_a_public_key(server_dir, tmp_path, kind):
    path = tmp_path / "bad.key"
    path.write_bytes(BAD_FILES[kind])
    with pytest.raises(ConfigError):
        keys.allow(server_dir[0], "mallory", path)
    assert keys.authorized(server_dir[0]) == {}


def test_allow_refuses_a_directory_a_fifo_and_a_missing_file(server_dir, tmp_path):
    os.mkfifo(tmp_path / "fifo")   # opened without waiting for a writer, then refused
    for path in (tmp_path, tmp_path / "fifo", tmp_path / "missing.key"):
        with pytest.raises(ConfigError):
            keys.allow(server_dir[0], "mallory", path)


def test_allow_refuses_a_secret_key_given_by_mistake(server_dir, client_dir):
    with pytest.raises(ConfigError, match="holds a secret key"):
        keys.allow(server_dir[0], "alice", client_dir[0] / "secret.key")
    assert keys.authorized(server_dir[0]) == {}


def test_user_mistakes_end_with_exit_78_and_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    for args in (["init", "--keys", tmp_path / "file"], ["init", "--keys", tmp_path / "file" / "below"],
                 ["show", "--keys", tmp_path / "missing"], ["list", "--keys", tmp_path / "missing"],
                 ["allow", "x", tmp_path / "missing.key", "--keys", tmp_path], ["revoke", "x", "--keys", tmp_path]):
        assert main(["keys", *map(str, args)]) == 78   # anything but our own errors would raise here
        assert capsys.readouterr().err.count("\n") == 1, args


# -- loading is refused when the files are not private ----------------------------------------

def test_a_world_readable_secret_key_is_refused_by_the_loader(server_dir):
    directory, _ = server_dir
    (directory / "secret.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as refused:
        keys.load_keypair(directory)
    assert str(directory / "secret.key") in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o620, 0o610], ids=oct)
def test_a_secret_key_open_to_group_or_others_in_any_way_is_refused(server_dir, bits):
    (server_dir[0] / "secret.key").chmod(bits)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.load_keypair(server_dir[0])


def test_a_world_readable_secret_key_is_refused_by_the_cli_with_exit_78(server_dir):
    directory, _ = server_dir
    (directory / "secret.key").chmod(0o644)
    done = cli("show", "--keys", directory)
    assert done.returncode == 78
    assert done.stderr.count("\n") == 1 and "chmod 600" in done.stderr and str(directory / "secret.key") in done.stderr
    assert done.stdout == ""


def test_a_key_directory_writable_by_others_is_refused(server_dir, client_dir):
    directory, _ = server_dir
    directory.chmod(0o777)
    with pytest.raises(ConfigError, match="chmod 700"):
        keys.load_keypair(directory)
    with pytest.raises(ConfigError, match="chmod 700"):
        keys.allow(directory, "alice", client_dir[0] / "public.key")
    directory.chmod(0o700)
    (directory / "authorized").chmod(0o757)
    with pytest.raises(ConfigError, match="chmod 700"):
        keys.allow(directory, "alice", client_dir[0] / "public.key")


def test_a_linked_secret_key_and_a_missing_one_are_refused(server_dir, tmp_path):
    directory, _ = server_dir
    (directory / "secret.key").rename(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigError, match="keys init"):
        keys.load_keypair(directory)
    (directory / "secret.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigError, match="symbolic link"):
        keys.load_keypair(directory)


def test_a_public_key_that_does_not_match_the_secret_key_is_refused(server_dir, tmp_path):
    directory, _ = server_dir
    keys.init(tmp_path / "other")
    os.replace(tmp_path / "other" / "public.key", directory / "public.key")
    with pytest.raises(ConfigError, match="does not match"):
        keys.load_keypair(directory)


# -- the allowed set, without sockets -----------------------------------------------------------

def test_the_allowed_set_caches_and_sees_an_in_place_edit_after_its_rescan_interval(server_dir, client_dir, tmp_path):
    directory, _ = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    allowed_dir, clock = directory / "authorized", Clock()
    os.utime(allowed_dir, (1e9, 1e9))   # an old directory: its timestamp can be trusted
    allowed = keys.AuthorizedKeys(allowed_dir, rescan_s=1.0, clock=clock)
    old = client_dir[1].public
    assert allowed.name_of(old) == "alice"
    new = keys.init(tmp_path / "new").public
    with open(allowed_dir / "alice.key", "r+b") as f:   # edited in place: the directory does not change
        f.write((allowed_dir / "alice.key").read_bytes().replace(old, new))
    assert allowed.name_of(old) == "alice"     # the cached answer until the rescan interval is over
    clock.now += 1.0
    assert (allowed.name_of(old), allowed.name_of(new)) == (None, "alice")


def test_the_allowed_set_sees_a_revocation_at_once(server_dir, client_dir):
    directory, _ = server_dir
    allowed = keys.AuthorizedKeys(directory / "authorized", clock=Clock())
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    assert allowed.name_of(client_dir[1].public) == "alice"
    keys.revoke(directory, "alice")
    assert allowed.name_of(client_dir[1].public) is None


def test_an_unsafe_allowed_directory_allows_no_one(server_dir, client_dir):
    directory, _ = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    allowed = keys.AuthorizedKeys(directory / "authorized", clock=Clock())
    assert allowed.name_of(client_dir[1].public) == "alice"
    (directory / "authorized").chmod(0o777)
    assert allowed.name_of(client_dir[1].public) is None
    assert "chmod 700" in allowed.problems[0]


def test_links_and_invalid_files_in_the_allowed_directory_are_ignored(server_dir, client_dir, tmp_path):
    directory, _ = server_dir
    (directory / "authorized" / "linked.key").symlink_to(client_dir[0] / "public.key")
    (directory / "authorized" / "junk.key").write_bytes(b"junk")
    (directory / "authorized" / "notes.txt").write_bytes(b"not a key")
    for path in [*(directory / "authorized").iterdir(), directory / "authorized"]:   # old: the cache is trusted
        os.utime(path, (1e9, 1e9), follow_symlinks=False)
    clock = Clock()
    allowed = keys.AuthorizedKeys(directory / "authorized", clock=clock)
    assert allowed.snapshot() == {}
    assert len(allowed.problems) == 2
    clock.now += allowed.rescan_s   # a re-scan that reads nothing again still says why
    assert allowed.snapshot() == {} and len(allowed.problems) == 2


# -- ZAP answers, without sockets ---------------------------------------------------------------

@pytest.fixture
def answering(server_dir, client_dir):
    ctx = zmq.Context()
    keys.allow(server_dir[0], "alice", client_dir[0] / "public.key")
    yield curve.Authenticator(ctx, keys.AuthorizedKeys(server_dir[0] / "authorized"))
    terminate(ctx)


def zap_request(key: bytes, domain=b"leptonrt", mechanism=b"CURVE"):
    return [b"1.0", b"7", domain, b"127.0.0.1", b"", mechanism, z85.decode(key)]


def test_an_allowed_key_is_answered_200_with_its_name_and_key(answering, client_dir):
    reply = answering.answer(zap_request(client_dir[1].public))
    assert reply[:5] == [b"1.0", b"7", b"200", b"OK", b"alice"]
    assert client_dir[1].public in reply[5] and curve.KEY_PROPERTY.encode() in reply[5]


@pytest.mark.parametrize("request_", [
    zap_request(b"a" * 40), zap_request(b"a" * 40, domain=b""), [b"1.0"], [], [b"2.0"] + [b""] * 6,
    [b"1.0", b"7", b"leptonrt", b"", b"", b"CURVE", b"short"], [b"1.0", b"7", b"leptonrt", b"", b"", b"NULL"]])
def test_anything_else_is_answered_400(answering, request_):
    assert answering.answer(request_)[2] == b"400"
    assert answering.statistics().refused == 1


@pytest.mark.parametrize("wrong", ["domain", "mechanism"])
def test_an_allowed_key_in_the_wrong_domain_or_mechanism_is_answered_400(answering, client_dir, wrong):
    request = zap_request(client_dir[1].public, **{wrong: b"NULL" if wrong == "mechanism" else b"other"})
    assert answering.answer(request)[2] == b"400"


def test_an_empty_domain_cannot_be_configured(answering):
    with pytest.raises(InternalError, match="empty"):
        curve.Authenticator(None, answering.allowed, domain=b"")


def test_loopback_endpoint_turns_wildcards_into_loopback():
    assert curve.loopback_endpoint("tcp://0.0.0.0:5555") == "tcp://127.0.0.1:5555"
    assert curve.loopback_endpoint("tcp://[::]:5555") == "tcp://[::1]:5555"
    assert curve.loopback_endpoint("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"
    assert curve.loopback_endpoint("ipc:///run/x.sock") == "ipc:///run/x.sock"


# -- sockets: who gets in ---------------------------------------------------------------------

def test_an_allowed_client_gets_a_reply_and_is_known_by_its_name(net, served, client_dir):
    router, endpoint, server, auth = served
    keys.allow(client_dir[0].parent / "server", "alice", client_dir[0] / "public.key")
    sock, monitor = dealer(net, endpoint, server.public, keys.load_keypair(client_dir[0]))
    assert handshake(monitor) == ADMITTED
    assert round_trip(router, sock, auth) == "alice"
    assert auth.statistics().admitted == 1


def test_an_unknown_key_is_refused_at_the_handshake(net, served, client_dir):
    router, endpoint, server, auth = served
    sock, monitor = dealer(net, endpoint, server.public, client_dir[1])
    assert handshake(monitor) == REFUSED_BY_ZAP
    with contextlib.suppress(zmq.Again):   # queued, if at all, for a connection that never comes
        sock.send(b"let me in", zmq.NOBLOCK)
    assert router.poll(100) == 0
    assert auth.statistics().refused >= 1


def test_a_client_without_curve_is_refused(net, served):
    router, endpoint, _server, _auth = served
    sock, monitor = dealer(net, endpoint)
    assert handshake(monitor)[0] in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    assert router.poll(100) == 0


def test_revoking_a_key_refuses_its_next_connection_and_cuts_off_its_open_one(net, served, client_dir):
    router, endpoint, server, auth = served
    directory = client_dir[0].parent / "server"
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    sock, monitor = dealer(net, endpoint, server.public, client_dir[1])
    assert handshake(monitor) == ADMITTED and round_trip(router, sock, auth) == "alice"
    keys.revoke(directory, "alice")
    assert round_trip(router, sock, auth, b"still there?") is None   # the open connection is cut off
    assert auth.statistics().cut_off == 1
    _again, monitor = dealer(net, endpoint, server.public, client_dir[1])
    assert handshake(monitor) == REFUSED_BY_ZAP


def test_a_name_given_to_a_new_key_does_not_readmit_the_old_one(net, served, client_dir, tmp_path):
    router, endpoint, server, auth = served
    directory = tmp_path / "server"
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    stolen, monitor = dealer(net, endpoint, server.public, client_dir[1])
    assert handshake(monitor) == ADMITTED and round_trip(router, stolen, auth) == "alice"
    new = keys.init(tmp_path / "new")
    keys.allow(directory, "alice", tmp_path / "new" / "public.key", force=True)
    assert round_trip(router, stolen, auth) is None
    fresh, monitor = dealer(net, endpoint, server.public, new)
    assert handshake(monitor) == ADMITTED and round_trip(router, fresh, auth) == "alice"


async def test_an_asyncio_context_is_served_by_the_same_authenticator(server_dir, client_dir):
    ctx = zmq.asyncio.Context()
    directory, server = server_dir
    keys.allow(directory, "alice", client_dir[0] / "public.key")
    router, sock = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        with curve.Authenticator(ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
            curve.arm_server(router, server, auth)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            await asyncio.to_thread(curve.self_test, router.last_endpoint.decode(), server.public, auth)
            curve.arm_client(sock, server.public, client_dir[1])
            sock.connect(f"tcp://127.0.0.1:{port}")
            await sock.send(b"ping")
            _identity, frame = await asyncio.wait_for(router.recv_multipart(copy=False), WAIT_MS / 1000)
            assert auth.sender(frame) == "alice"
    finally:
        router.close(linger=0)
        sock.close(linger=0)
        terminate(ctx)


# -- arming cannot be done wrong --------------------------------------------------------------

def test_arming_refuses_a_socket_without_a_live_authenticator_on_its_context(net, server_dir):
    directory, pair = server_dir
    allowed = keys.AuthorizedKeys(directory / "authorized")
    with pytest.raises(InternalError, match="live authenticator"):
        curve.arm_server(net.socket(zmq.ROUTER), pair, curve.Authenticator(net.ctx, allowed))   # never started
    other = zmq.Context()
    try:
        with curve.Authenticator(other, allowed) as elsewhere:
            with pytest.raises(InternalError, match="another zmq context"):
                curve.arm_server(net.socket(zmq.ROUTER), pair, elsewhere)
    finally:
        terminate(other)
    with curve.Authenticator(net.ctx, allowed) as auth:
        bound = net.socket(zmq.ROUTER)
        bound.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(InternalError, match="before it binds"):
            curve.arm_server(bound, pair, auth)
    with pytest.raises(InternalError, match="live authenticator"):
        curve.arm_server(net.socket(zmq.ROUTER), pair, auth)   # closed


def test_a_second_authenticator_on_one_context_is_refused(net, server_dir):
    allowed = keys.AuthorizedKeys(server_dir[0] / "authorized")
    with curve.Authenticator(net.ctx, allowed):
        with pytest.raises(InternalError, match="another ZAP handler"):
            curve.Authenticator(net.ctx, allowed).start()


def test_an_authenticator_refuses_to_start_on_an_unsafe_allowed_directory(net, server_dir):
    (server_dir[0] / "authorized").chmod(0o777)
    with pytest.raises(ConfigError, match="chmod 700"):
        curve.Authenticator(net.ctx, keys.AuthorizedKeys(server_dir[0] / "authorized")).start()


# -- the self-test ----------------------------------------------------------------------------

def test_the_self_test_passes_on_an_armed_socket_and_writes_nothing(served, server_dir):
    router, endpoint, server, auth = served
    curve.self_test(router.last_endpoint.decode(), server.public, auth)
    assert keys.authorized(server_dir[0]) == {}
    assert auth.statistics().admitted == 1 and auth.statistics().refused == 1


def test_the_self_test_passes_on_a_wildcard_listener(net, server_dir):
    directory, pair = server_dir
    with curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
        router = net.socket(zmq.ROUTER)
        curve.arm_server(router, pair, auth)
        router.bind_to_random_port("tcp://0.0.0.0")
        curve.self_test(router.last_endpoint.decode(), pair.public, auth)


def raw_curve_router(net, pair, ctx=None, domain=None, enforce=0):
    """A CURVE ROUTER set up by hand, the way the two misconfigurations are made."""
    router = net.socket(zmq.ROUTER, ctx)
    router.curve_server = 1
    router.curve_secretkey = pair.secret
    if domain is not None:
        router.zap_domain = domain
    router.set(zmq.ZAP_ENFORCE_DOMAIN, enforce)
    router.bind_to_random_port("tcp://127.0.0.1")
    return router.last_endpoint.decode()


def test_the_self_test_fails_when_no_zap_handler_answers(net, server_dir):
    directory, pair = server_dir
    bare = zmq.Context()   # no authenticator on this context: libzmq admits every key
    try:
        endpoint = raw_curve_router(net, pair, ctx=bare, domain=b"leptonrt")
        with curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
            with pytest.raises(InternalError, match="a rogue CURVE key: expected refused by the authenticator, saw admitted"):
                curve.self_test(endpoint, pair.public, auth)
    finally:
        for sock in net.opened:
            sock.close(linger=0)
        terminate(bare)


def test_the_self_test_fails_when_the_zap_domain_is_empty(net, server_dir):
    directory, pair = server_dir
    with curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
        endpoint = raw_curve_router(net, pair, enforce=1)   # libzmq then asks no ZAP handler at all
        with pytest.raises(InternalError, match="a rogue CURVE key: expected refused by the authenticator, saw admitted"):
            curve.self_test(endpoint, pair.public, auth)


def test_the_self_test_fails_on_a_socket_without_curve(net, server_dir):
    directory, pair = server_dir
    with curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
        router = net.socket(zmq.ROUTER)
        router.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(InternalError, match="a client without CURVE: expected a refusal, saw admitted"):
            curve.self_test(router.last_endpoint.decode(), pair.public, auth)


def test_the_self_test_fails_within_its_time_at_a_listener_that_never_speaks(net, server_dir):
    directory, pair = server_dir
    with socket.create_server(("127.0.0.1", 0)) as mute:   # accepts connections, never sends a greeting
        port = mute.getsockname()[1]
        with curve.Authenticator(net.ctx, keys.AuthorizedKeys(directory / "authorized")) as auth:
            with pytest.raises(InternalError, match="not answered within 0.2s") as failed:
                curve.self_test(f"tcp://127.0.0.1:{port}", pair.public, auth, timeout_s=0.2)
    assert str(failed.value).count("not answered") == 3
