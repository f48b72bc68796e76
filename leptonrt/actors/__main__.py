import os
import sys

from .tether import Tether, parse_args

# first, before seconds of imports and warm-up: a broker that dies meanwhile takes us along
_args = parse_args(sys.argv[1:])
Tether(_args.parent_pid, _args.parent_pid, _args.connect).hold()

if os.environ.get("LEPTONRT_SPARE") == "1":
    # a spare gets ready beside running actors: at idle priority, never at their expense
    from .idle import at_idle_priority

    def _get_ready() -> None:
        import torch

        from .main import _warm_up
        _warm_up(torch.device("cpu"))

    at_idle_priority(_get_ready)

from .main import main  # noqa: E402

sys.exit(main())
