"""Deploys as deploy tools make them: a directory per release, each with its own
virtual environment, a ``current`` link switched between them.

Each release has its own virtual environment (a real ``python -m venv``, with the
test environment's packages reachable through a ``.pth`` file, as a shared wheel
cache would give them), its own copy of a small local package ``relpkg`` whose
version differs per release, a console script ``graceful`` whose shebang names the
release's physical interpreter (as pip writes it), and an ASGI app that answers with
its release, ``relpkg``'s version, and the interpreter it runs on. A release may
have a graceful of its own: a copy of this one installed in its environment, with
another version string.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from harness import ROOT
from services import minimal_asgi_app

#: What each release's app answers (``minimal_asgi_app``'s body): its release,
#: ``relpkg``'s version, and the interpreter, environment and working directory.
ANSWER = (
    'json.dumps({"release": MESSAGE, "relpkg": relpkg.VERSION, "executable": sys.executable,'
    ' "prefix": sys.prefix, "cwd": os.getcwd(), "relpkg_file": relpkg.__file__})'
)


@dataclass
class Deployment:
    """``root/releases/rN`` and ``root/current`` pointing at one of them."""

    root: Path

    @property
    def current(self) -> Path:
        return self.root / "current"

    def release(
        self,
        name: str,
        relpkg_version: str,
        *,
        extra: str = "",
        venv_link: bool = False,
        graceful: bool = True,
        graceful_version: str | None = None,
        app: str | None = None,
    ) -> Path:
        """Make release ``name``: its app, its venv, its ``relpkg`` and console script.
        With ``venv_link``, ``.venv`` is a link to a venv kept outside the release
        (``venvs/NAME``, as tools that share a venv per requirements hash do); without
        ``graceful``, graceful cannot be imported in it; with ``graceful_version``, the
        release's environment has a graceful of its own, a copy of this one whose
        version is ``graceful_version``. ``app`` replaces the app's source."""
        release = self.root / "releases" / name
        release.mkdir(parents=True)
        (release / "app.py").write_text(
            app
            if app is not None
            else minimal_asgi_app(
                name, header=f"import json\nimport sys\nimport relpkg\n{extra}", body=ANSWER
            )
        )
        venv = release / ".venv"
        if venv_link:
            shared_venv = self.root / "venvs" / name
            shared_venv.parent.mkdir(exist_ok=True)
            venv.symlink_to(shared_venv)
            venv = shared_venv
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
        )
        site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        package = site / "relpkg"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"VERSION = {relpkg_version!r}\n")
        metadata = site / f"relpkg-{relpkg_version}.dist-info"
        metadata.mkdir()
        (metadata / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: relpkg\nVersion: {relpkg_version}\n"
        )
        # the test environment's packages (graceful's dependencies, the servers) and
        # this graceful, after the release's own site-packages
        shared = sysconfig.get_path("purelib")
        own = graceful_version is not None
        (site / "shared.pth").write_text(
            f"{shared}\n{ROOT}\n" if graceful and not own else f"{shared}\n"
        )
        if graceful_version is not None:
            copy = site / "graceful"
            shutil.copytree(ROOT / "graceful", copy, ignore=shutil.ignore_patterns("__pycache__"))
            version = copy / "_version.py"
            text = version.read_text()
            version.write_text(
                text.replace('VERSION = "', f'VERSION = "{graceful_version}"  # "', 1)
            )
        script = venv / "bin" / "graceful"
        script.write_text(
            f"#!{venv}/bin/python3\nimport re\nimport sys\nfrom graceful.cli import main\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            "    sys.exit(main())\n"
        )
        script.chmod(0o755)
        return release

    def switch(self, name: str) -> None:
        """Point ``current`` at release ``name`` atomically (``ln -s`` + ``mv -T``)."""
        staged = self.root / "current.staged"
        staged.symlink_to(Path("releases") / name)
        staged.replace(self.current)
