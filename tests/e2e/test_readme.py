"""The README's client snippets work as printed."""

import contextlib
import io
import json
import re
import subprocess
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


def test_the_readme_curl_snippet_talks_to_the_gateway(pipeline: Pipeline) -> None:
    snippet = re.findall(r"```bash\n(now=.*?)```", README.read_text(), re.DOTALL)[0]
    assert snippet.count("localhost:8080") == 4
    script = snippet.replace("localhost:8080", f"127.0.0.1:{pipeline.http_port}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("curl -s", "curl -sS --fail-with-body")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    replies = done.stdout.replace("}{", "}\n{").splitlines()
    assert json.loads(replies[0]) == {
        "accepted": 1,
        "dropped": 1,
        "duplicates": 0,
        "rejections": [
            {
                "index": 1,
                "event_id": "evt-0002",
                "reason": "MISSING_FIELD",
                "detail": "campaign_id is empty",
            }
        ],
    }
    assert json.loads(replies[1]) == {
        "accepted": 1,
        "dropped": 0,
        "duplicates": 0,
        "rejections": [],
    }
    assert "points" in json.loads(replies[2])  # the dataflow may not have written yet
