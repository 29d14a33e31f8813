"""What importing `room` costs: the pytest plugin (`room.testing`, loaded by pytest in every
session where `room` is installed) and ``import room`` must not import aiortc or PyAV."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("module", ["room.testing", "room"])
def test_importing_does_not_import_aiortc_or_av(module: str) -> None:
    out = _run(f"""
        import sys
        import {module}
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("aiortc", "av", "aioice", "hypothesis"))
        print(heavy)
    """)
    assert out.strip() == "[]", out


def test_the_testing_toolkit_names_are_all_there() -> None:
    out = _run("""
        import room.testing as t
        for name in t.__all__:
            getattr(t, name)
        from room.testing import RoomMachine, Scenario, strategies
        assert strategies.histories and Scenario.play and RoomMachine.run
        print("ok")
    """)
    assert out.strip() == "ok"


def test_every_exported_name_is_still_there() -> None:
    out = _run("""
        import sys
        import room
        from room import Room
        assert Room is room.Room and Room.__module__ == "room.room"
        assert "aiortc" in sys.modules  # Room itself does bring aiortc in
        for name in room.__all__:
            getattr(room, name)
        assert set(room.__all__) <= set(dir(room))
        namespace = {}
        exec("from room import *", namespace)
        assert "Room" in namespace
        try:
            room.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError("room.NoSuchThing exists")
        print("ok")
    """)
    assert out.strip() == "ok"
