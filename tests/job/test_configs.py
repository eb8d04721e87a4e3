"""The shipped config files say what the code does: defaults match, the example is valid."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from tcia_fetch.job.models import DownloadSection, OutputSection, ServerSection, VerifySection

CONFIGS = Path(__file__).parents[2] / "configs"
SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSection,
    "output": OutputSection,
    "download": DownloadSection,
    "verify": VerifySection,
}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_default_job_file_matches_model_defaults_key_for_key(name: str) -> None:
    document = tomllib.loads((CONFIGS / "default-job.toml").read_text(encoding="utf-8"))
    model = SECTIONS[name]
    section = document[name]
    documented_optional = {"dest"}  # no default value to write down; explained in a comment
    assert set(section) | documented_optional >= set(model.model_fields), "a setting is undocumented"
    assert model.model_validate(section) == model()


def test_default_job_file_has_no_other_sections() -> None:
    document = tomllib.loads((CONFIGS / "default-job.toml").read_text(encoding="utf-8"))
    assert set(document) == set(SECTIONS)


def test_example_job_file_mentions_every_setting() -> None:
    document = tomllib.loads((CONFIGS / "example-job.toml").read_text(encoding="utf-8"))
    for name, model in SECTIONS.items():
        assert set(document[name]) == set(model.model_fields), name
