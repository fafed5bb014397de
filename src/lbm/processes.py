"""Process helpers every layer may use (worker pools of data generation and evaluation)."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """Start a daemon thread that ends this process as soon as ``parent_pid`` is gone.

    On Linux a child whose parent was killed is re-parented (to init or a subreaper), so a changed
    parent pid means the parent died; ``os._exit`` then stops the worker even in the middle of a
    long simulation step, without unwinding into broken pipes.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(every_s)

    threading.Thread(target=watch, name="lbm-parent-watch", daemon=True).start()
