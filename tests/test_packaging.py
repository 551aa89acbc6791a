"""The built wheel carries the profiles and the catalog, and works from a fresh venv."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_profiles_and_lists_them_from_a_fresh_venv(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    wheel = next((tmp_path / "dist").glob("edgellm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("edgellm/profile_data/")}
    assert {"raspberry-pi-5.toml", "rk3588.toml", "phone-arm.toml", "laptop-x86.toml", "generic.toml", "README.md"} <= shipped

    # A fresh venv with only the wheel; its dependencies come from this environment's site-packages
    # through a .pth path (no network, and no editable finder, which .pth paths do not run).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, timeout=300)
    assert installed.returncode == 0, installed.stderr.decode()[-2000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    listed = subprocess.run([str(python), "-m", "edgellm", "profiles", "--json"], capture_output=True, timeout=120,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr.decode()
    assert {p["name"] for p in json.loads(listed.stdout)} == {"raspberry-pi-5", "rk3588", "phone-arm", "laptop-x86", "generic"}
    where = subprocess.run([str(python), "-c", "import edgellm; print(edgellm.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(env_dir))
    # Every module of the source tree is in the wheel (0.2's serve package once was not: `edgellm
    # serve` failed with an ImportError outside an editable install), and the server imports.
    sources = {str(p.relative_to(REPO)) for p in (REPO / "edgellm").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    imported = subprocess.run([str(python), "-c", "import edgellm.serve, edgellm.cli.app, edgellm.runtime.batch"],
                              capture_output=True, text=True, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
