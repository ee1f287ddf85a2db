"""The README's client snippet works as printed."""

import contextlib
import io
import re
from pathlib import Path

from tests.e2e.conftest import Pipeline

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_client_snippet_streams_an_event(pipeline: Pipeline) -> None:
    snippet = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)[0]
    assert "127.0.0.1:50051" in snippet
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.replace("127.0.0.1:50051", pipeline.target), {})
    assert out.getvalue() == "1 0 []\n"
