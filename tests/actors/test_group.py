"""A group forms after a failed attempt in one member: the members name it alike."""

from __future__ import annotations

import subprocess
import sys
import textwrap

MEMBER = textwrap.dedent("""
    import sys, datetime, torch, torch.distributed as dist
    from leptonrt.actors.group import init_world
    rank, failed_first, where = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
    if failed_first:   # a generation whose other member never came
        try:
            init_world("gloo", dist.FileStore(where + "/lonely", 2), 0, 2, datetime.timedelta(seconds=1))
        except Exception as exc:
            print("first attempt failed:", type(exc).__name__, file=sys.stderr)
        assert not dist.is_initialized()
    init_world("gloo", dist.FileStore(where + "/next", 2), rank, 2, datetime.timedelta(seconds=20))
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    print(int(total.item()))
    dist.destroy_process_group()
""")


def test_a_member_whose_last_attempt_failed_still_forms_the_next_group_with_a_fresh_one(tmp_path):
    members = [subprocess.Popen([sys.executable, "-c", MEMBER, str(rank), str(int(rank == 0)), str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [m.communicate(timeout=60) for m in members]
    finally:
        for m in members:
            m.kill()
    assert [m.returncode for m in members] == [0, 0], [err for _, err in outs]
    assert [out.split() for out, _ in outs] == [["3"], ["3"]]
    assert "first attempt failed" in outs[0][1]
