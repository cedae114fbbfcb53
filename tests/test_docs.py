"""The documentation site: the config reference is generated from the config classes and is current, every config
key is documented, and the site builds with `mkdocs build --strict` (no broken link or anchor, no page left out of
the nav), as `make docs` builds it."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from pydantic import Field

from core.config import BaseConfig
from tools import config_reference

REPO = Path(__file__).resolve().parents[1]


def test_the_config_reference_is_current_and_every_key_is_documented(capsys):
    code = config_reference.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_the_reference_shows_keys_with_type_default_and_documentation():
    page = config_reference.PAGE.read_text()
    # A key documented by a comment above it in core/train_config.py, with its bounds and default.
    assert "| `keep_last_k` | int (≥ 1) | `3` |" in page
    assert "| `save_dir` | str | required | Checkpoints, TensorBoard logs and evaluation reports go under this" in page
    # Nested classes are linked and located by key path.
    assert "At `model.tasks.<name>`." in page and "[MlpConfig](#mlpconfig)" in page


def test_comments_above_and_beside_fields_are_read(tmp_path, monkeypatch):
    source = textwrap.dedent('''
        from pydantic import Field
        from core.config import BaseConfig


        class Sample(BaseConfig):
            """A sample."""

            # Two lines
            # of documentation.
            documented: int = 1
            beside: int = Field(default=2, ge=0)  # said beside it
            undocumented: str = "x"

            # A comment with a blank line after it documents nothing.

            also_undocumented: bool = False
    ''')
    (tmp_path / "sample_config.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sample_config

    cls = sample_config.Sample
    assert config_reference.field_doc(cls, "documented") == "Two lines of documentation."
    assert config_reference.field_doc(cls, "beside") == "said beside it"
    assert config_reference.field_doc(cls, "undocumented") is None
    assert config_reference.field_doc(cls, "also_undocumented") is None


def test_an_undocumented_key_fails_the_check(monkeypatch, capsys):
    class Undocumented(BaseConfig):
        surprise: int = Field(default=1, ge=0)

    roots = config_reference.roots()
    monkeypatch.setattr(config_reference, "roots",
                        lambda: [*roots, config_reference.Root("Extra", Undocumented, "A test root.")])
    assert config_reference.undocumented() == ["Undocumented.surprise"]
    assert config_reference.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "Undocumented.surprise: no documentation" in err and "is stale" in err


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                             str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
    assert (tmp_path / "site" / "architecture" / "index.html").exists()


def test_the_readme_links_resolve():
    # README.md is outside the site, so mkdocs does not check its links into docs/.
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / "README.md").read_text())
    assert len(links) > 10
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, missing
