"""The ``discover`` command line: thin wrappers around the library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

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
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """discover-ray command line."""


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the world, every training run and every dissection.")] = 0,
    root: Annotated[str, typer.Option(help="Folder for the world, checkpoints, dissections and reports.")] = "./discover-demo",
    quick: Annotated[bool, typer.Option(help="Only train a tiny CNN in-process and label its neurons (seconds, no Ray).")] = False,
    method: Annotated[str, typer.Option(help="Similarity function shown in the tables.")] = "soft_wpmi",
    units: Annotated[int, typer.Option(help="Hidden units to show per layer.")] = 6,
) -> None:
    """The whole loop on a generated world: train a tiny CLIP, target models and their CVN twins (Ray Train),
    dissect them on Ray, analyse, and write the reports; ends with the report's path."""
    if quick:
        _quick_demo(seed, method, units)
        return
    import time

    def run() -> int:
        from discover_ray.demo.loop import run_loop
        from discover_ray.on_ray.cluster import shutdown

        began = time.perf_counter()
        result = run_loop(root, seed=seed, console=console)
        shutdown()  # the cluster's own messages end here, before the summary
        _print_loop(result, method, units)
        console.print(f"done in {time.perf_counter() - began:.0f} s ("
                      + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ")")
        console.print(f"configs: {result.root / 'configs'} (edit one and re-run it with `discover dissect` or "
                      "`discover train`)", highlight=False)
        console.print(f"report: {result.reports['cnn_cvn2']}", highlight=False)
        return 0

    raise typer.Exit(_user_errors(run, on_ray=True))


def _print_loop(result, method: str, units: int) -> None:
    from discover_ray import load_run, read_labels, read_simulation

    shots = Table(title="tiny CLIP: zero-shot accuracy on held-out world images")
    for family in result.zero_shot:
        shots.add_column(family, justify="right")
    shots.add_row(*(f"{v:.0%}" for v in result.zero_shot.values()))
    console.print(shots)
    ident = Table(title=f"target models: validation top-1 and final-layer neuron identification ({method})")
    for column in ("model", "val top-1", "labels", "tiny CLIP"):
        ident.add_column(column, justify="right" if column != "model" else "left")
    for name, target in result.targets.items():
        run = load_run(result.store, target["run_id"])
        found = {i.source.split(":")[0]: i.top1 for i in run.identification if i.method == method}
        ident.add_row(name, f"{target['val_top1']:.1%}", f"{found.get('labels', 0):.0%}", f"{found.get('clip', 0):.0%}")
    console.print(ident)
    run_id = result.targets["cnn_cvn2"]["run_id"]
    neurons = Table(title=f"labelled neurons of the CNN CVN (tiny CLIP, {method})")
    for column in ("layer", "unit", "concept", "score", "runners-up"):
        neurons.add_column(column)
    for layer in ("relu3", "fc"):
        (_, labels), *_ = [(e, t) for e, t in read_labels(result.store, run_id, layer, method=method)
                           if e.source.startswith("clip")]
        ranked = labels.ranked()
        for unit in list(ranked)[: (len(ranked) if layer == "fc" else units)]:
            concepts = ranked[unit]
            neurons.add_row(layer, unit, concepts[0][0], f"{concepts[0][1]:.3f}", ", ".join(c for c, _ in concepts[1:3]))
    console.print(neurons)
    found = [(e, t) for e, t in read_labels(result.store, run_id, "relu3", method="linear_explanation")
             if e.source == "families"]
    if found:
        (entry, explanations), = found
        test_r = read_simulation(result.store, run_id, entry) or {}
        view = Table(title="Linear Explanations of the CNN CVN's relu3 units (the world's five concept families)")
        for column in ("unit", "explanation", "test r"):
            view.add_column(column)
        for unit in explanations.units[:units]:
            r = test_r.get(unit)
            view.add_row(unit, explanations.describe(unit), "" if r is None else f"{r:.2f}")
        console.print(view)
        simulated = [s for s in load_run(result.store, run_id).simulation
                     if s.layer == "relu3" and s.source == "families" and s.scoring == "correlation"]
        console.print("simulation on held-out images, relu3 (families): " + ", ".join(
            f"{s.method} {s.correlation_mean:.3f}" for s in simulated if s.correlation_mean is not None), highlight=False)
    if "cnn" in result.targets:
        _print_described(result.store, result.targets["cnn"]["run_id"], method, units)


def _print_described(store: str, run_id: str, method: str, units: int) -> None:
    """Describe-and-Dissect's labels beside CLIP-Dissect's, each with its verification AUC on drawn images."""
    from discover_ray import load_run, read_labels, read_verification

    record = load_run(store, run_id)
    if not any(e.method == "describe_and_dissect" for e in record.labels):
        return
    view = Table(title=f"the CNN's units: CLIP-Dissect ({method}, tiny CLIP) beside Describe-and-Dissect, each with its "
                       "verification AUC on drawn images")
    for column in ("layer", "unit", method, "AUC", "describe_and_dissect", "AUC "):
        view.add_column(column, justify="right" if column.startswith("AUC") else "left")
    for layer in ("relu3", "fc"):
        found = {e.method: (e, t) for e, t in read_labels(store, run_id, layer)
                 if e.method == "describe_and_dissect" or (e.method == method and e.source.startswith("clip"))}
        if len(found) < 2:
            continue
        (clip_entry, clip_labels), (dnd_entry, dnd_labels) = found[method], found["describe_and_dissect"]
        clip_auc = read_verification(store, record, clip_entry) or {}
        dnd_auc = read_verification(store, record, dnd_entry) or {}
        clip_top, dnd_top = clip_labels.top(), dnd_labels.top()
        shown = list(clip_top) if layer == "fc" else list(clip_top)[:units]
        for unit in shown:
            a, b = clip_auc.get(unit), dnd_auc.get(unit)
            view.add_row(layer, unit, clip_top[unit][0], "" if a is None else f"{a:.2f}",
                         dnd_top.get(unit, ("(not described)", 0))[0], "" if b is None else f"{b:.2f}")
    console.print(view)
    for v in record.verification:
        if v.auc_mean is not None:
            console.print(f"verification {v.layer} {v.method}" + (f" ({v.source})" if v.source else "")
                          + f": AUC {v.auc_mean:.3f}, shuffled labels {v.auc_shuffled_mean:.3f}, MAD {v.mad_mean:.2f}",
                          highlight=False)


def _quick_demo(seed: int, method: str, units: int) -> None:
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


@app.command("world")
def world_command(
    out: Annotated[str, typer.Argument(help="Folder for train.parquet, val.parquet, probe.parquet and concepts.txt.")],
    seed: Annotated[int, typer.Option(help="Seed of the images (split i uses seed·10 + i).")] = 0,
    train: Annotated[int, typer.Option(help="Training images.")] = 6000,
    val: Annotated[int, typer.Option(help="Validation images.")] = 900,
    probe: Annotated[int, typer.Option(help="Probe images for dissections.")] = 900,
) -> None:
    """Generate the world of coloured, patterned shapes with known concepts, as Parquet splits."""
    from discover_ray import world

    folder = world.write_world(out, seed, train, val, probe)
    console.print(f"{folder}: train {train}, val {val}, probe {probe} images; "
                  f"{len(world.concept_vocabulary())} concepts in concepts.txt", highlight=False)


@app.command()
def concepts(
    source: Annotated[str, typer.Argument(help="A concept file (local path or s3://...) or a built-in set name.")],
    show: Annotated[int, typer.Option(help="Concepts to print.")] = 10,
) -> None:
    """Load and clean a concept set; print its id, size, what cleaning dropped, and its first concepts."""
    from discover_ray.concepts import load_concepts
    from discover_ray.errors import DiscoverError

    try:
        concept_set = load_concepts(source)
    except DiscoverError as err:
        raise typer.Exit(_print_error(err)) from None
    console.print(f"{concept_set.name}: {len(concept_set)} concepts, id {concept_set.id}")
    console.print(f"cleaning: {concept_set.report.summary()}")
    for text in concept_set.concepts[:show]:
        console.print(f"  {text}")


def _print_error(err: Exception) -> int:
    console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
    return 2


def _user_errors(run: Callable[[], int | None], on_ray: bool = False) -> int:
    """Runs a command; a ``DiscoverError`` (bad input) is printed as one line and exits 2, anything else is a
    bug and shows its traceback. Commands ``on_ray`` keep the raylet's notices off the console."""
    import contextlib

    from discover_ray.errors import DiscoverError

    quiet = contextlib.nullcontext()
    if on_ray:
        from discover_ray.on_ray.console import without_ray_notices

        quiet = without_ray_notices()
    try:
        with quiet:
            return run() or 0
    except DiscoverError as err:
        return _print_error(err)


def run_dissect(config_path: str, address: str | None = None, store: str | None = None, local: bool = False) -> int:
    """Load, run, and report a dissection; bad input prints one clear error line and returns 2."""

    def run() -> int:
        from discover_ray import dissect, load_config

        config = load_config(config_path, store=store)
        if address:
            config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": address})})
        result = dissect(config, executor="local" if local else "ray", console=console)
        ran = [s for s in result.recomputed if s.stage != "PREPARE"]
        summary = f"{len(ran)} stages in {sum(s.seconds for s in ran):.1f} s" if ran else "nothing to recompute, all stages were done"
        console.print(f"run {result.run_id} done in {result.store}: {summary}", highlight=False)
        layers = sorted({e.layer for e in result.labels})
        console.print(f"labels: discover labels {result.run_id} --store {result.store} --layer "
                      f"{layers[-1] if layers else 'LAYER'}", highlight=False)
        return 0

    return _user_errors(run, on_ray=not local)


@app.command()
def dissect(
    config: Annotated[str, typer.Argument(help="Dissection config (YAML); see jobs/configs/.")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default RAY_ADDRESS or a local cluster.")] = None,
    store: Annotated[str | None, typer.Option(help="Output root (path or s3://...), overriding the config.")] = None,
    local: Annotated[bool, typer.Option("--local", help="Run every stage in this process, without Ray (debugging, small runs).")] = False,
) -> None:
    """Dissect the configured checkpoints: EMBED → DECODE → RECORD → REDUCE, resuming what is done."""
    raise typer.Exit(run_dissect(config, address, store, local))


@app.command()
def submit(
    args: Annotated[list[str], typer.Argument(
        metavar="[dissect|train|watch] CONFIG [TRAIN_DIR]",
        help="What to run (default dissect) and its config: a dissection config; a training config (train); "
             "a dissection config and the training run's folder, local or s3://... (watch).")],
    address: Annotated[str, typer.Option(help="Ray dashboard address, e.g. http://127.0.0.1:8265.")],
    wait: Annotated[bool, typer.Option(help="Wait for the job and print its log.")] = True,
    epochs: Annotated[int | None, typer.Option(help="train: train to this many epochs, overriding the config.")] = None,
) -> None:
    """Submit a dissection, a training run or one watch pass as a Ray job, named by its content: the same
    submission attaches to the same job. A token-auth head gets RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token)."""
    status: list[str] = []

    def run() -> int:
        from discover_ray.on_ray.submit import submit as submit_job

        spec = _submit_spec(args, epochs)
        status.append(submit_job(spec, address, console, wait=wait))
        console.print(f"job {spec.job_id}: {status[0]}", highlight=False)
        return 0 if status[0] in ("SUCCEEDED", "PENDING", "RUNNING") else 1

    raise typer.Exit(_user_errors(run))


def _submit_spec(args: list[str], epochs: int | None):
    """The job ``discover submit [dissect|train|watch] CONFIG [TRAIN_DIR]`` names (the kind word is optional)."""
    from discover_ray.on_ray import submit as jobs

    kind, rest = (args[0], args[1:]) if args and args[0] in ("dissect", "train", "watch") else ("dissect", args)
    wanted = ["CONFIG", "TRAIN_DIR"] if kind == "watch" else ["CONFIG"]
    if len(rest) != len(wanted):
        raise typer.BadParameter(f"`discover submit {kind}` takes {' '.join(wanted)}, got {len(rest)} argument(s)",
                                 param_hint="[dissect|train|watch] CONFIG [TRAIN_DIR]")
    if epochs is not None and kind != "train":
        raise typer.BadParameter("--epochs is for `discover submit train`", param_hint="--epochs")
    if kind == "train":
        from discover_ray import load_train_config

        return jobs.train_job(load_train_config(rest[0], epochs=epochs))
    from discover_ray import load_config
    from discover_ray.errors import ConfigError

    try:
        config = load_config(rest[0])
    except ConfigError as err:
        if args[0] == kind or "epochs: Extra inputs" not in str(err):
            raise
        raise ConfigError(f"{err} (a training config? `discover submit train {rest[0]}`)") from None
    if kind == "watch":
        from discover_ray.config_files import absolute
        from discover_ray.watch import watch_id

        return jobs.watch_job(rest[1], config, watch_id(absolute(rest[1]) or rest[1], config))
    from discover_ray.dissection import submission_id

    return jobs.dissect_job(config, submission_id(config))


@app.command()
def watch(
    train_dir: Annotated[str, typer.Argument(metavar="TRAIN_DIR", help="A training run's folder (local or s3://...).")],
    config: Annotated[str, typer.Option(help="Dissection config; its first model is given each checkpoint.")],
    once: Annotated[bool, typer.Option(help="One pass, then exit (for a scheduled job).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between passes without --once.")] = 600.0,
    local: Annotated[bool, typer.Option("--local", help="Every stage in this process, without Ray.")] = False,
) -> None:
    """Dissect every completed checkpoint of a training run not dissected yet; print how the labels drift."""
    raise typer.Exit(run_watch(train_dir, config, once=once, interval=interval, local=local))


def run_watch(train_dir: str, config_path: str, once: bool = False, interval: float = 600.0, local: bool = False) -> int:
    """Passes of ``watch_once`` (one with ``once``), each printed; bad input prints one clear line and returns 2."""

    def run() -> int:
        import time

        from discover_ray import load_config
        from discover_ray.watch import watch_once

        resolved = load_config(config_path)
        while True:
            found = watch_once(train_dir, resolved, executor="local" if local else "ray", console=console)
            _print_watch(found)
            if once:
                return 0
            time.sleep(interval)

    return _user_errors(run, on_ray=not local)


def _print_watch(found) -> None:
    done = sum(c["status"] == "done" for c in found.checkpoints)
    console.print(f"watch {found.watch_id}: {len(found.checkpoints)} completed checkpoints, {found.dissected} dissected "
                  f"now, {done} before", highlight=False)
    if found.drift:
        view = Table(title="label drift between consecutive checkpoints")
        for column in ("layer", "labels", "from → to", "stable", "changed most"):
            view.add_column(column)
        for d in found.drift:
            moved = "; ".join(f"{c['unit']} {c['concept_a']} → {c['concept_b']}" for c in d.most_changed[:3]
                              if c["concept_a"] != c["concept_b"])
            view.add_row(d.layer, f"{d.method}, {d.source}", f"{d.before} → {d.after}", f"{d.stable}/{d.units}",
                         moved or "–")
        console.print(view)
    for where, concepts in found.first_seen.items():
        by_checkpoint: dict[str, list[str]] = {}
        for concept, checkpoint in concepts.items():
            by_checkpoint.setdefault(checkpoint, []).append(concept)
        console.print(f"first labels in {where}: " + "; ".join(f"{c}: {', '.join(sorted(v))}"
                                                                for c, v in by_checkpoint.items()), highlight=False)


@app.command()
def labels(
    run: Annotated[str, typer.Argument(help="Run id (printed by `discover dissect`).")],
    layer: Annotated[str, typer.Option(help="Layer name, as in the config.")],
    store: Annotated[str, typer.Option(help="Output root the run was written to.")] = "./discover-runs",
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (its alias or name).")] = None,
    units: Annotated[int, typer.Option(help="Units to show per table (0: all).")] = 20,
) -> None:
    """Print a layer's concept labels: each unit's best concept, its score and the runners-up; for Linear
    Explanations each unit's weighted explanation, its validation and (when scored) test correlation; for
    Describe-and-Dissect each unit's top 3 labels and the units it could not describe; with each label's
    verification AUC when the run verified it."""

    def show() -> int:
        from discover_ray import load_run, read_labels, read_simulation, read_verification
        from discover_ray.schema import Descriptions, Explanations

        record = None
        for entry, table in read_labels(store, run, layer, method=method, model=model):
            ranked = table.ranked()
            shown = list(ranked) if units == 0 else list(ranked)[:units]
            record = record or load_run(store, run)
            test_r = read_simulation(store, record, entry, "correlation")
            auc = read_verification(store, record, entry, "auc")

            def verified(unit: str, auc: dict[str, float | None] | None = auc) -> list[str]:
                if auc is None:
                    return []
                value = auc.get(unit)
                return ["" if value is None else f"{value:.2f}"]

            view = Table(title=f"{entry.model} / {layer}: {entry.method}" + (f" over {entry.source}" if entry.source else ""))
            if isinstance(table, Explanations):
                columns = [("unit", "right"), ("explanation", "left"), ("test r", "right")]
            elif isinstance(table, Descriptions):
                columns = [("unit", "right"), ("label 1", "left"), ("score", "right"), ("labels 2–3", "left")]
            else:
                columns = [("unit", "right"), ("concept", "left"), ("score", "right"), ("runners-up", "left")]
            for name, justify in columns + ([("AUC", "right")] if auc is not None else []):
                view.add_column(name, justify=justify)  # type: ignore[arg-type]
            for unit in shown:
                concepts = ranked[unit]
                if isinstance(table, Explanations):
                    r = test_r.get(unit) if test_r else None
                    row = [unit, table.describe(unit), "" if r is None else f"{r:.2f}"]
                elif isinstance(table, Descriptions):
                    row = [unit, concepts[0][0], f"{concepts[0][1]:.2f}", "; ".join(c for c, _ in concepts[1:3])]
                else:
                    row = [unit, concepts[0][0], f"{concepts[0][1]:.4f}", ", ".join(c for c, _ in concepts[1:])]
                view.add_row(*row, *verified(unit))
            console.print(view)
            if len(shown) < len(ranked):
                console.print(f"({len(ranked) - len(shown)} more units; --units 0 shows all)")
            if isinstance(table, Descriptions):
                for unit, (status, reason) in table.failures().items():
                    console.print(f"{unit}: {status}: {reason}", highlight=False)
        return 0

    raise typer.Exit(_user_errors(show))


@app.command()
def calibrate(
    config_path: Annotated[str, typer.Argument(metavar="CONFIG", help="Dissection config YAML.")],
    source: Annotated[str | None, typer.Option(help="The clip concept source to calibrate (its name).")] = None,
    method: Annotated[str, typer.Option(help="exact (the optimum) or grid (the reference's grid).")] = "exact",
    ray: Annotated[bool, typer.Option("--ray", help="Embed the probe images on Ray (default: in this process).")] = False,
) -> None:
    """Fit a CLIP / SigLIP source's concept values σ(a·(cos + b)) to the probe set's labels (+ superclasses);
    prints the line to add to the source in the config."""

    def run() -> int:
        from discover_ray import load_config
        from discover_ray.dissection.calibration import calibrate_source

        found = calibrate_source(load_config(config_path), source, method=method, executor="ray" if ray else "local")
        c = found.calibration
        console.print(f"{found.source}: a = {c.a:.6g}, b = {c.b:.6g} (mean BCE {c.loss:.5f}, {c.method}) over "
                      f"{found.images} images × {found.targets} classes and superclasses", highlight=False)
        console.print(f"add to concept source {found.source!r}:  {found.yaml()}", highlight=False)
        return 0

    raise typer.Exit(_user_errors(run))


def run_train(config_path: str, address: str | None = None, storage_path: str | None = None, epochs: int | None = None) -> int:
    """Load, train (or resume), and report a training run; bad input prints one clear error line and returns 2."""

    def run() -> int:
        from discover_ray import load_train_config
        from discover_ray import train as train_run

        config = load_train_config(config_path, storage_path=storage_path, epochs=epochs)
        if address:
            config = config.model_copy(update={"scaling": config.scaling.model_copy(update={"address": address})})
        result = train_run(config, console=console)
        view = Table(title=f"{result.name}: {config.model.name}")
        for column in ("epoch", "loss", "ce", "kl", "train top-1", "val top-1", "active fraction", "img/s"):
            view.add_column(column, justify="right")
        for row in result.history:
            fractions = row["active_fraction"]
            low, high = (min(fractions.values()), max(fractions.values())) if fractions else (1.0, 1.0)
            active = f"{low:.4f}" if round(low, 4) == round(high, 4) else f"{low:.4f}–{high:.4f}"
            view.add_row(str(row["epoch"]), f"{row['loss']:.4f}", f"{row['ce']:.4f}", f"{row['kl']:.4f}",
                         f"{row['train_top1']:.2%}", f"{row['val_top1']:.2%}" if "val_top1" in row else "–", active,
                         f"{row['images_per_s']:.0f}")
        console.print(view)
        trained = (f"trained epochs {result.trained_epochs[0]}–{result.trained_epochs[-1]}" if result.trained_epochs
                   else "nothing to train")
        console.print(f"{trained}; checkpoint: {result.model_file}", highlight=False)
        return 0

    return _user_errors(run, on_ray=True)


@app.command()
def train(
    config: Annotated[str, typer.Argument(help="Training config (YAML); see jobs/configs/train_*.yaml.")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default RAY_ADDRESS or a local cluster.")] = None,
    storage_path: Annotated[str | None, typer.Option(help="Checkpoint root (path or s3://...), overriding the config.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Train to this many epochs, overriding the config.")] = None,
) -> None:
    """Train a (competitive) vision network with Ray Train; a re-run with the same name resumes it."""
    raise typer.Exit(run_train(config, address, storage_path, epochs))


@app.command("explain-image")
def explain_image_command(
    run: Annotated[str, typer.Argument(help="Run id (printed by `discover dissect`).")],
    image: Annotated[str, typer.Option(help="The probe image's image_id.")],
    layer: Annotated[str, typer.Option(help="Layer name, as in the config.")],
    store: Annotated[str, typer.Option(help="Output root the run was written to.")] = "./discover-runs",
    method: Annotated[str | None, typer.Option(help="Labels of this method (default: the first).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model (its alias or name).")] = None,
) -> None:
    """An image's active neurons in a layer (each block's winner in LWTA layers), with their concepts."""

    def show() -> int:
        from discover_ray import explain_image

        result = explain_image(store, run, image, layer, method=method, model=model)
        view = Table(title=f"{image}: {result.model} / {layer} ({result.method})")
        for name in ("unit", "activation", "concept", "score"):
            view.add_column(name, justify="left" if name in ("unit", "concept") else "right")
        for row in result.table.to_pylist():
            view.add_row(row["unit"], f"{row['activation']:.4f}", row["concept"] or "–",
                         f"{row['score']:.4f}" if row["score"] is not None else "–")
        console.print(view)
        blocks = f", one per block of {result.block_size}" if result.block_size > 1 else ""
        console.print(f"{result.count} of {result.units} units active ({result.fraction:.2%}{blocks})")
        return 0

    raise typer.Exit(_user_errors(show))


@app.command()
def sparsity(
    run: Annotated[str, typer.Argument(help="Run id (printed by `discover dissect`).")],
    store: Annotated[str, typer.Option(help="Output root the run was written to.")] = "./discover-runs",
) -> None:
    """Per layer, the mean ± std over the probe set of the fraction of active units (|a| > 1e-4; in LWTA layers,
    a ≠ 0), of the recorded vector and, for LWTA layers, at every position of the unpooled output (1/U)."""

    def show() -> int:
        from discover_ray.analyze import layer_sparsity

        view = Table(title=f"run {run}: active fraction per example")
        for name in ("model", "layer", "U", "units", "recorded (pooled)", "per position"):
            view.add_column(name, no_wrap=name not in ("model", "layer"))
        for row in layer_sparsity(store, run):
            position = row.per_position
            view.add_row(row.model, row.layer, str(row.block_size), str(row.pooled.units),
                         f"{row.pooled.mean:.4f} ± {row.pooled.std:.4f}",
                         f"{position.mean:.4f} ± {position.std:.4f}" if position else "–")
        console.print(view)
        return 0

    raise typer.Exit(_user_errors(show))


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run ids: two runs (label stability between them), one run of many "
                                                   "checkpoints, or three or more runs (the evolution across them).")],
    store: Annotated[str, typer.Option(help="Output root the runs were written to.")] = "./discover-runs",
    method: Annotated[str | None, typer.Option(help="Only this method.")] = None,
    show: Annotated[int, typer.Option(help="Most-changed units to list per layer.")] = 5,
    evolution: Annotated[bool, typer.Option("--evolution", help="Two runs as a sequence of checkpoints too.")] = False,
) -> None:
    """Label stability per layer between checkpoints, the units whose concept changed, and (over N checkpoints)
    the first checkpoint where each concept appears."""

    def run() -> int:
        if len(runs) == 2 and not evolution:
            from discover_ray import compare_runs

            run_a, run_b = runs
            view = Table(title=f"label stability {run_a} → {run_b}")
            for name in ("model", "layer", "method", "source", "stable", "most changed"):
                view.add_column(name)
            for c in compare_runs(store, run_a, run_b, method=method):
                moved = [r for r in c.changes.to_pylist() if r["concept_a"] != r["concept_b"]][:show]
                view.add_row(c.model, c.layer, c.method, c.source, f"{c.stable}/{c.units} ({c.stability:.0%})",
                             "; ".join(f"{r['unit']}: {r['concept_a']} → {r['concept_b']}" for r in moved) or "–")
            console.print(view)
            return 0
        from discover_ray import label_evolution

        for layer in label_evolution(store, runs, method=method, changed=show):
            view = Table(title=f"evolution of {layer.title} over {len(layer.checkpoints)} checkpoints")
            for name in ("step", "stable", "changed units"):
                view.add_column(name)
            for step in layer.steps:
                view.add_row(f"{step.before} → {step.after}", f"{step.stable}/{step.units} ({step.stability:.0%})",
                             "; ".join(f"{r['unit']}: {r['concept_a']} → {r['concept_b']}" for r in step.changed) or "–")
            console.print(view)
            for name, concepts in layer.first_by_checkpoint:
                console.print(f"  first at {name}: {', '.join(concepts[:12])}"
                                  + (f" and {len(concepts) - 12} more" if len(concepts) > 12 else ""), highlight=False)
        return 0

    raise typer.Exit(_user_errors(run))


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id (printed by `discover dissect`).")],
    store: Annotated[str, typer.Option(help="Output root the run was written to.")] = "./discover-runs",
    out: Annotated[
        str | None, typer.Option(help="Report folder: new, empty, or an earlier report's (default: runs/RUN/report "
                                         "in a local store, else ./discover-reports/RUN).")
    ] = None,
    method: Annotated[str | None, typer.Option(help="Labels shown on the cards (default: soft_wpmi if present).")] = None,
    examples: Annotated[int, typer.Option(help="Example pages, spread evenly over the probe set.")] = 12,
    image: Annotated[
        list[str] | None, typer.Option(help="An image_id to give an example page (repeatable; replaces --examples).")
    ] = None,
    top_images: Annotated[int, typer.Option(help="Most-activating probe images per neuron card.")] = 8,
    twin: Annotated[
        str | None, typer.Option(help="A twin run over the same probe set (e.g. the non-competitive twin of a CVN).")
    ] = None,
) -> None:
    """Write a self-contained HTML report of a run: neuron cards per layer, example pages, plots, summary."""

    def write() -> int:
        from discover_ray import build_report

        result = build_report(store, run, out=out, method=method, examples=image or examples,
                              top_images=top_images, twin=twin)
        for warning in result.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        console.print(f"{len(result.layers)} layer pages, {len(result.examples)} example pages, "
                      f"{result.thumbnails} thumbnails" + (", side by side with the twin run" if result.twin else "")
                      + (f", {len(result.evolution)} evolution page(s)" if result.evolution else ""))
        console.print(f"report: {result.index}", highlight=False)
        return 0

    raise typer.Exit(_user_errors(write))


@app.command()
def gc(
    store: Annotated[str, typer.Option(help="The store to clean (a path or s3://...).")] = "./discover-runs",
    apply: Annotated[bool, typer.Option("--apply", help="Remove the datasets listed (default: only list them).")] = False,
) -> None:
    """List the datasets no run record references (e.g. after a run folder was deleted); --apply removes them."""

    def run() -> int:
        from discover_ray.gc import collect

        found = collect(store, apply=apply)
        view = Table(title=f"{'removed' if apply else 'unreferenced'} datasets in {store}")
        for name in ("dataset", "files", "size"):
            view.add_column(name, justify="left" if name == "dataset" else "right")
        for dataset in found.garbage:
            view.add_row(dataset.path, str(dataset.files), _size(dataset.bytes))
        console.print(view)
        what = "removed" if apply else "can be removed (run again with --apply)"
        console.print(f"{len(found.garbage)} of {found.datasets} datasets, {_size(found.garbage_bytes)}, {what}; "
                      f"{found.referenced} referenced by {found.runs} runs", highlight=False)
        return 0

    raise typer.Exit(_user_errors(run))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


if __name__ == "__main__":
    app()
