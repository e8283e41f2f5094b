"""Found by a mutation audit.

close_backend names a backend whose aclose() gives a value that cannot be awaited."""

from __future__ import annotations

import anyio
import pytest

from sjfsched._service import close_backend


class _CountingClose:
    def aclose(self) -> int:
        return 42


def test_an_aclose_returning_a_value_is_named() -> None:
    with pytest.raises(TypeError, match=r"_CountingClose\.aclose\(\) returned int, not an awaitable"):
        anyio.run(close_backend, _CountingClose())
