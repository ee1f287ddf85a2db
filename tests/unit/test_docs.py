"""The README documents every setting the processes read."""

from pathlib import Path

import pytest

from pulse.settings import FlowSettings, IngestSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize(
    "field", sorted({*IngestSettings.model_fields, *FlowSettings.model_fields})
)
def test_every_setting_is_in_the_readme(field: str) -> None:
    assert f"`PULSE_{field.upper()}`" in README
