from __future__ import annotations

from typing import Any

import pytest
import trio.testing

from sjfsched import VirtualEventLoop


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Core tests run in virtual time, on asyncio and on trio."""
    if request.param == "asyncio":
        return ("asyncio", {"loop_factory": VirtualEventLoop})
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
