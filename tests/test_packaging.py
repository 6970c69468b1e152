"""The top-level adapters/ folder ships as splathead.adapters and never as a module `adapters`."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_holds_adapters_inside_splathead_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("splathead-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "splathead/adapters/__init__.py" in names
    assert "splathead/adapters/timm_vit.py" in names
    assert not [name for name in names if name.startswith("adapters/")]


def test_installed_package_imports_adapters_as_splathead_adapters(tmp_path):
    # Run outside the checkout, so only the installed package (editable here) is importable.
    check = (
        "import importlib.util, splathead.adapters; "
        "assert importlib.util.find_spec('adapters') is None, 'a top-level adapters module'; "
        "print(splathead.adapters.wrap.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == "splathead.adapters.wrap"
