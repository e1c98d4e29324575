"""The README's configuration reference lists every setting the config accepts."""

from pathlib import Path

from common.config import reference_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_reference():
    text = README.read_text(encoding="utf-8")
    missing = [key for key, _, _ in reference_rows() if f"| `{key}` |" not in text]
    assert missing == []
