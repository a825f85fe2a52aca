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


def test_user_errors_are_one_line_and_exit_2_and_bugs_show_their_traceback(tmp_path):
    import pytest

    from discover_ray.cli import _user_errors

    result = runner.invoke(app, ["dissect", str(tmp_path / "missing.yaml"), "--local"])
    assert result.exit_code == 2 and result.output.strip() == f"error: config file '{tmp_path / 'missing.yaml'}' not found"
    result = runner.invoke(app, ["labels", "0123456789abcdef", "--layer", "fc", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "no run '0123456789abcdef'" in result.output
    with pytest.raises(ZeroDivisionError):  # not a user error: it is not hidden behind a one-line message
        _user_errors(lambda: 1 // 0)


def test_dissect_in_process_from_the_cli(tmp_path):
    import numpy as np
    import yaml
    from PIL import Image

    from discover_ray import world

    data = world.generate(12, seed=1)
    pixels = (data.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, data.labels.tolist(), strict=True)):
        (tmp_path / "probe" / world.class_names()[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "probe" / world.class_names()[label] / f"{i}.png")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "store": str(tmp_path / "runs"), "probe": {"source": str(tmp_path / "probe")},
        "models": [{"name": "tiny_cnn", "builder": "discover_ray.demo:tiny_cnn", "kwargs": {"n_classes": 9},
                    "image_size": 32, "layers": ["fc"]}],
        "concepts": [{"kind": "labels"}], "reduce": {"methods": ["cos"], "top_k": 2}}))
    result = runner.invoke(app, ["dissect", str(config), "--local"])
    assert result.exit_code == 0, result.output
    assert "RECORD tiny_cnn: 12 images" in result.output and "REDUCE tiny_cnn/fc/labels: cos" in result.output
    again = runner.invoke(app, ["dissect", str(config), "--local"])
    assert "nothing to recompute" in again.output
