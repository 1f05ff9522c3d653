"""The Redis Lua scripts, one file each in backends/lua/ (read once, at construction)."""

from __future__ import annotations

from importlib import resources

_LUA = resources.files("surge.backends") / "lua"


def lua_script(name: str) -> str:
    return (_LUA / name).read_text()
