"""The ``discover`` command line: thin wrappers around the library."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from discover_ray import __version__

app = typer.Typer(
    help="discover-ray: dissect vision networks and train competitive (LWTA) networks on Ray.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # long paths and messages stay on one line


def _version(value: bool) -> None:
    if value:
        console.print(f"discover-ray {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """discover-ray command line."""


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the generated data, the training and the model.")] = 0,
    method: Annotated[
        str, typer.Option(help="Similarity function: cos, cos3, rank_reorder, wpmi, soft_wpmi.")
    ] = "soft_wpmi",
    units: Annotated[int, typer.Option(help="Units to show per hidden layer.")] = 8,
) -> None:
    """Train a tiny CNN on generated shapes and describe its neurons with concepts (offline, CPU)."""
    from discover_ray.demo import run_demo

    with console.status("training a tiny CNN on generated shapes and dissecting it..."):
        result = run_demo(seed=seed, method=method)
    console.print(f"tiny CNN accuracy: train {result.train_accuracy:.1%}, probe {result.probe_accuracy:.1%}")
    for layer in result.layers:
        table = Table(title=f"layer {layer.layer}: neuron → concept ({method})")
        table.add_column("unit", justify="right")
        table.add_column("concept")
        table.add_column("score", justify="right")
        table.add_column("runners-up")
        shown = len(layer.concepts) if layer.layer == "fc" else min(units, len(layer.concepts))
        for unit in range(shown):
            table.add_row(
                f"u{unit:05d}",
                layer.concepts[unit][0],
                f"{float(layer.scores[unit, 0]):.3f}",
                ", ".join(layer.concepts[unit][1:]),
            )
        console.print(table)
    ident = result.identification
    console.print(
        f"final-layer neuron identification: top-1 {ident.top1:.0%}, top-5 {ident.top5:.0%}, "
        f"mean rank {ident.mean_rank:.2f} over {len(ident.ranks)} output units"
    )


@app.command()
def concepts(
    source: Annotated[str, typer.Argument(help="A concept file (local path or s3://...) or a built-in set name.")],
    show: Annotated[int, typer.Option(help="Concepts to print.")] = 10,
) -> None:
    """Load and clean a concept set; print its id, size, what cleaning dropped, and its first concepts."""
    from discover_ray.concepts import load_concepts

    try:
        concept_set = load_concepts(source)
    except (FileNotFoundError, ValueError, KeyError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"{concept_set.name}: {len(concept_set)} concepts, id {concept_set.id}")
    console.print(f"cleaning: {concept_set.report.summary()}")
    for text in concept_set.concepts[:show]:
        console.print(f"  {text}")


if __name__ == "__main__":
    app()
