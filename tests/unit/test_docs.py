"""The README matches the code: settings and defaults, commands, the quick start CI proves."""

from __future__ import annotations

import re

from app.cli import main
from app.settings import Settings
from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_default():
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        shown = "(none)" if default in (None, []) else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        row = re.search(rf"^\| `BERTSERVE_{name.upper()}` \| ([^|]+) \|", README, re.M)
        assert row, f"BERTSERVE_{name.upper()} is not in the README's settings table"
        assert row.group(1).strip() == shown, (name, row.group(1), shown)


def test_documented_variables_exist():
    documented = set(re.findall(r"BERTSERVE_([A-Z_]+)", README))
    assert documented <= {n.upper() for n in Settings.model_fields}, documented - {
        n.upper() for n in Settings.model_fields
    }


def test_quick_start_is_the_two_make_commands_and_ci_runs_the_second():
    quick = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quick.strip().splitlines()] == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_documented_commands_exist(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    help_text = capsys.readouterr().out
    for command in set(re.findall(r"`bertserve ([a-z-]+)", README)):
        assert command in help_text, f"README names `bertserve {command}`, which the CLI does not have"
