"""The frameworks users run, as they run them: a project made by ``django-admin
startproject`` (its WSGI and its ASGI entry points), a Flask app, a FastAPI app with
a lifespan. Each is reloaded under load with an edited answer: 0 failed requests,
and the edit is served."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ServiceProcess, poll_until
from http_load import HttpLoad

DJANGO_URLS = """\
from django.http import HttpResponse
from django.urls import path


def home(request):
    return HttpResponse({answer!r}, content_type="text/plain")


urlpatterns = [path("", home)]
"""

DJANGO_WARM_UP = """\
def check():
    import django
    from django.db import connection

    django.setup()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
"""

FLASK_APP = """\
from flask import Flask

app = Flask(__name__)


@app.route("/")
def home():
    return {answer!r}
"""

FASTAPI_APP = """\
import contextlib

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.answer = {answer!r}  # set at startup: the worker is ready after it
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def home():
    return app.state.answer
"""


def start_django_project(tmp_path: Path) -> Path:
    """A project made by django-admin startproject, with a view: its urls.py."""
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
        check=True,
        timeout=60,
    )
    return tmp_path / "mysite" / "urls.py"


def reloaded_under_load(
    tmp_path: Path, app: str, source: Path, template: str, *extra: str, env: dict[str, str]
) -> None:
    """Serve ``app``, put it under load, edit ``source`` twice with a reload after each,
    and check that every request succeeded and every edit was served."""
    source.write_text(template.format(answer="answer 1"))
    svc = ServiceProcess(
        source,
        module="graceful",
        args=["serve", app, "--listen", "127.0.0.1:0", "--no-access-log", "--workers", "2",
              "--drain-timeout", "10", *extra],
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    with svc:
        svc.wait_serving(1, timeout=60)
        with HttpLoad(f"http://{svc.address()}/", clients=24) as load:
            load.wait_for_body("answer 1")
            for generation in (2, 3):
                source.write_text(template.format(answer=f"answer {generation}"))
                mark = svc.mark()
                svc.send(signal.SIGHUP)
                svc.wait_serving(generation, after=mark, timeout=60)
                load.wait_for_body(f"answer {generation}")
            poll_until(lambda: load.tally.ok > 500, 20, "500 answers")
        assert load.tally.failed == 0, load.tally.as_dict()
        assert set(load.tally.bodies) <= {"answer 1", "answer 2", "answer 3"}
        svc.send(signal.SIGTERM)
        assert svc.wait_exit() == 0, svc.output


@pytest.mark.parametrize(
    ("entry", "interface"),
    [("mysite.wsgi:application", "wsgi"), ("mysite.asgi:application", "auto")],
)
def test_a_django_project_through_its_wsgi_and_asgi_entry_points(
    tmp_path: Path, entry: str, interface: str
) -> None:
    urls = start_django_project(tmp_path)
    # a warm-up as a Django user would write one: set up, then touch the database
    (tmp_path / "warmup.py").write_text(DJANGO_WARM_UP)
    reloaded_under_load(
        tmp_path,
        entry,
        urls,
        DJANGO_URLS,
        "--interface",
        interface,
        "--ready-hook",
        "warmup:check",
        env={"DJANGO_SETTINGS_MODULE": "mysite.settings"},
    )


def test_a_flask_app_recognised_as_wsgi(tmp_path: Path) -> None:
    reloaded_under_load(tmp_path, "app:app", tmp_path / "app.py", FLASK_APP, env={})


def test_a_fastapi_app_with_a_lifespan(tmp_path: Path) -> None:
    reloaded_under_load(tmp_path, "app:app", tmp_path / "app.py", FASTAPI_APP, env={})
