"""The core wheel is pure Python and ships the top-level adapters/ folder as splathead.adapters
(never as a module `adapters`); `import splathead` loads none of the recipes' dependencies; every
dependency of both distributions declares the floor that `make test-floor` tests; the recipes'
optional C extension is built wherever it can be."""

import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]


def test_the_jpeg_extension_is_built_where_libjpeg_headers_are():
    # recipes/setup.py builds it optionally: a build that quietly skipped it would leave every loader on
    # whole-image decodes (tests/test_jpeg_region.py skips without it, so this guards them).
    folders = [Path("/usr/include"), Path("/usr/local/include"), Path(sys.base_prefix, "include")]
    if not any((folder / "jpeglib.h").exists() for folder in folders):
        pytest.skip("no jpeglib.h here: the extension is optional")
    assert importlib.util.find_spec("splathead_recipes._jpeg") is not None


def test_core_wheel_is_pure_python_and_holds_adapters_inside_splathead_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("splathead-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in names if name.endswith((".so", ".pyd", ".c"))]
    assert not [name for name in names if "bsds" in name or name.startswith("splathead_recipes")]
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


def test_import_splathead_loads_none_of_the_recipes_dependencies(tmp_path):
    # A fresh interpreter: what `import splathead` pulls in, outside the checkout.
    recipes_only = ["scipy", "skimage", "torchmetrics", "tensorboard", "simplejpeg", "pyEdgeEval",
                    "splathead_recipes", "transformers", "gsplat"]
    check = ("import sys, splathead; "
             f"print([name for name in {recipes_only!r} if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def _requirements() -> list[Requirement]:
    found = []
    for pyproject in (ROOT / "pyproject.toml", ROOT / "recipes" / "pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        extras = [req for reqs in project.get("optional-dependencies", {}).values() for req in reqs]
        found += [Requirement(req) for req in project["dependencies"] + extras
                  if not req.startswith("splathead[")]
    return found


def test_every_dependency_declares_the_floor_make_test_floor_runs():
    unbounded = [str(req) for req in _requirements()
                 if not any(spec.operator in (">=", "==", "~=") for spec in req.specifier)]
    assert unbounded == []


def test_the_floor_run_holds_torch_at_the_pins_make_test_installs():
    makefile = (ROOT / "Makefile").read_text()
    (pins,) = re.findall(r"^TORCH_PINS \?= (.+)$", makefile, flags=re.MULTILINE)
    constraints = (ROOT / ".ci" / "floor-constraints.txt").read_text().splitlines()
    held = [line for line in constraints if line and not line.startswith("#")]
    assert held == pins.split()
