from __future__ import annotations

from typer.testing import CliRunner

from discover_ray import __version__
from discover_ray.cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output and "concepts" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_concepts_command_reports_cleaning(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("dog\n\ncat\ndog\n")
    result = runner.invoke(app, ["concepts", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 concepts" in result.output and "dropped 1 blank" in result.output and "'dog' (line 4)" in result.output
    result = runner.invoke(app, ["concepts", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "not found" in result.output


def test_quick_demo_prints_labels_for_every_output_unit():
    result = runner.invoke(app, ["demo", "--quick", "--units", "2"])
    assert result.exit_code == 0, result.output
    assert "layer fc" in result.output and "blue triangle" in result.output
    assert "final-layer neuron identification: top-1" in result.output
