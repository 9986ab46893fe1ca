from __future__ import annotations

import sys
import types

import pytest

from cxrbench.errors import RegistryError
from cxrbench.registry import Registry


def test_exact_lookup_and_did_you_mean() -> None:
    reg: Registry[int] = Registry("method")
    reg.add("convirt", 1)
    reg.add("gloria", 2)
    assert reg.get("convirt") == 1
    with pytest.raises(RegistryError) as info:
        reg.get("convrt")
    message = str(info.value)
    assert "unknown method 'convrt'" in message
    assert "Did you mean 'convirt'" in message
    assert "Known methods: convirt, gloria" in message
    with pytest.raises(RegistryError):
        reg.get("ConVIRT")  # exact keys: no case folding


def test_duplicate_and_bad_names_are_errors() -> None:
    reg: Registry[int] = Registry("task")
    reg.add("siim_seg", 1)
    reg.add("siim_seg", 1)  # the same object again (module re-import) is fine
    with pytest.raises(RegistryError, match="registered twice"):
        reg.add("siim_seg", 2)
    with pytest.raises(RegistryError, match="lower-case"):
        reg.add("Siim Seg", 3)


def test_discovery_imports_every_module_of_the_package(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "fakepkg_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("raise RuntimeError('base must not be imported')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private must not be imported')\n")
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(
            f"from tests_registry_holder import REG\nREG.add('{name}', '{name}-obj')\n"
        )
    reg: Registry[str] = Registry("method", "fakepkg_methods")
    holder = types.ModuleType("tests_registry_holder")
    holder.REG = reg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_registry_holder", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reg.names() == ["alpha", "beta"]
    assert reg.get("beta") == "beta-obj"
    assert "alpha" in reg and len(reg) == 2
