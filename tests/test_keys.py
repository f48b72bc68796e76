"""CURVE key files and the allowed set (unit tests: no sockets)."""

import os
import stat
import subprocess
import sys

import pytest
import zmq
import zmq.auth

from leptonrt import keys
from leptonrt.cli import main
from leptonrt.errors import ConfigError

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")


# -- helpers ---------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server_dir(tmp_path):
    directory = tmp_path / "server"
    return directory, keys.init(directory)


@pytest.fixture
def client_dir(tmp_path):
    directory = tmp_path / "client"
    return directory, keys.init(directory)


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
    assert main(["keys", "allow", "bob.laptop", str(tmp_path / "other" / "public.key"), "--keys", str(directory)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--keys", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"alice  {client_dir[1].public.decode()}",
                                                    f"bob.laptop  {other.public.decode()}"]
    assert zmq.auth.load_certificate(directory / "authorized" / "alice.key") == (client_dir[1].public, None)
    assert main(["keys", "revoke", "alice", "--keys", str(directory)]) == 0
    assert keys.authorized(directory) == {"bob.laptop": other.public}
    assert main(["keys", "revoke", "alice", "--keys", str(directory)]) == 78


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


def test_user_mistakes_end_with_exit_78_and_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    for args in (["init", "--keys", tmp_path / "file"], ["init", "--keys", tmp_path / "file" / "below"],
                 ["show", "--keys", tmp_path / "missing"], ["list", "--keys", tmp_path / "missing"],
                 ["allow", "x", tmp_path / "missing.key", "--keys", tmp_path], ["revoke", "x", "--keys", tmp_path]):
        done = cli(*args)
        assert (done.returncode, done.stderr.count("\n"), "Traceback" in done.stderr) == (78, 1, False), (args, done.stderr)


# -- loading is refused when the files are not private ----------------------------------------

def test_a_world_readable_secret_key_is_refused_by_the_loader(server_dir):
    directory, _ = server_dir
    (directory / "secret.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as refused:
        keys.load_keypair(directory)
    assert str(directory / "secret.key") in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620], ids=oct)
def test_a_secret_key_open_to_group_or_others_is_refused_by_the_cli_with_exit_78(server_dir, bits):
    directory, _ = server_dir
    (directory / "secret.key").chmod(bits)
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
