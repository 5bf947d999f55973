"""Every translate test runs in memo checking mode: each memo hit is built again and
compared with what was memoized, so a memo key that misses an input fails the test that
reuses it (``xdsd.translate.memo``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xdsd.translate.memo import CHECK_MEMO_ENV


@pytest.fixture(autouse=True)
def check_memo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(CHECK_MEMO_ENV, "1")
    yield
