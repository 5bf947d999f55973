"""What the daemon tells systemd and ``/readyz``: ready, reloading, and its status line.

``Readiness`` is the one place that decides when xdsd is ready (a configuration loaded
and the listeners bound) and what its one-line status says, including why the reloader
cannot make progress when it cannot (the issue-14 trouble report: ``/readyz`` is 503
then, with the same reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from xdsd.admin import AdminViews
from xdsd.notify import Notifier
from xdsd.plurals import counted
from xdsd.state import MeshState

log = logging.getLogger(__name__)


class Readiness:
    """Tells systemd when xdsd is ready (the ``/readyz`` condition: a configuration loaded,
    or the restart cache's build served, and the listeners bound), reloading, and what
    its status is (with ``NOT RELOADING`` and the reason while ``trouble`` gives one:
    ``/readyz`` is 503 then)."""

    def __init__(self, notifier: Notifier, views: AdminViews, state: MeshState) -> None:
        self.notifier = notifier
        self.views = views
        self.state = state
        self.announced = False
        self._reloading = False
        self._status = ""
        #: Why the reloader cannot make progress ("" when it can): part of the status.
        self.trouble: Callable[[], str] = lambda: ""
        #: What the daemon serves without ("" when nothing): part of the status, not of
        #: readiness (etcd unreachable: registrations as last known).
        self.degraded: Callable[[], str] = lambda: ""

    def reloading(self) -> None:
        """A requested reload (SIGHUP) begins; ``update`` ends it."""
        if self.announced:
            self._reloading = True
            self.notifier.reloading()

    def update(self) -> None:
        """After a reload or once listening: READY=1 when newly ready (or a requested reload
        ended), else a STATUS= line when the status text changed."""
        status = self._text()
        if not self.announced:
            if self.views.listening and (self.state.loaded is not None or self.state.cached):
                self.announced = True
                self._status = status
                self.notifier.ready(status)
                log.info("ready: %s", status)
            elif status != self._status:
                self._status = status
                self.notifier.status(status)
            return
        if self._reloading:
            self._reloading = False
            self._status = status
            self.notifier.ready(status)
        elif status != self._status:
            self._status = status
            self.notifier.status(status)

    def _text(self) -> str:
        state = self.state
        cached = self.state.cached
        if state.loaded is None and cached:
            text = f"serving the cached build ({cached}) of {state.config_dir}, verifying"
            if state.errors:
                refused = counted(len(state.errors), "error")
                text += f"; its full load refused ({refused})"
            return text
        if state.loaded is None:
            errors = counted(len(state.errors), "error")
            return f"waiting for a valid configuration in {state.config_dir}: {errors}"
        mesh = state.loaded.mesh
        text = f"serving {counted(len(mesh.services), 'service')} from {state.config_dir}"
        if state.errors:
            refused = counted(len(state.errors), "error")
            text += f"; last edit refused ({refused}), serving the last good one"
        trouble = self.trouble()
        if trouble:
            text += f"; NOT RELOADING: {trouble}"
        degraded = self.degraded()
        if degraded:
            text += f"; {degraded}"
        return text
