"""``merc imbalance``: is a modality under-trained inside the joint model, or merely weak?

A jointly trained model that leans on text leaves audio and visual under-trained (SPCL
Fig. 7, Ada2I Fig. 5): their own heads score low. But a low unimodal score alone does not
say whether the modality was *neglected* or simply *carries little*: the comparison that
tells the two apart is the same encoder trained alone on that modality (Peng et al.,
OGM-GE, CVPR 2022, Fig. 1; Wu et al., "Characterizing and overcoming the greedy nature of
learning in multi-modal deep neural networks", ICML 2022).

:func:`compare_with_alone` takes a finished ``merc train`` run folder of a model with
unimodal logits, trains the same model with the same recipe and seeds on each of its
modalities alone (run folders ``RUN/alone/<m>``, resumable like any run), and compares,
per modality, the test weighted F1 of the joint model's unimodal head (scored in the same
single test pass as the fused prediction, ``results.json`` ``unimodal.test``) with the
alone model's. ``gap = alone - joint``: a large positive gap is imbalance (the joint model
under-uses a modality it could learn); a gap near zero with a low score is a weak modality.

The alone runs drop the joint recipe's modality-balance plug-ins (``--balance`` group: they
have nothing to balance with one modality) and keep everything else. Writes
``unimodal_vs_alone.json``, ``.md`` and ``.png`` into the run folder.

Experiment driver beside the runner (depends on training and evaluation); torch and the
runner are imported inside the functions, because the CLI builds every parser at start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merc.errors import ConfigError
from merc.training.run_folder import ALONE_DIR, ALONE_REPORT_STEM

REPORT_STEM = ALONE_REPORT_STEM

if TYPE_CHECKING:
    from merc.data.schema import MercDataset


def _balance_sections() -> set[str]:
    from merc.training.plugins.registry import plugin_groups

    return {spec.section for spec in plugin_groups().get("balance", [])}


def alone_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The joint run's recipe for a one-modality run: without its balance plug-ins."""
    balance = _balance_sections()
    return {k: v for k, v in recipe.items() if k not in balance}


def joint_unimodal_scores(run: Path) -> dict[str, dict[str, Any]]:
    """``{m: {metric: {"mean", "std", "per_seed"}}}`` of the joint model's heads on test.

    Raises:
        ConfigError: The run has no finished results, or recorded no unimodal scores
            (an early-fusion model, or a run from before merc recorded them).
    """
    path = run / "results.json"
    if not path.is_file():
        raise ConfigError(f"{run} has no results.json: finish the run first (rerun the same merc train command)")
    results = json.loads(path.read_text(encoding="utf-8"))
    scores = (results.get("unimodal") or {}).get("test") or {}
    if not scores:
        raise ConfigError(
            f"{run}: results.json has no unimodal test scores; the model has no unimodal logits "
            f"({results.get('model')!r} may fuse early), or the run predates them: train it again with --overwrite"
        )
    return scores


def compare_with_alone(
    run_dir: str | Path,
    data_root: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    dataset: MercDataset | None = None,
) -> dict[str, Any]:
    """Train each modality alone beside a joint run and compare unimodal test scores.

    Args:
        run_dir: A finished ``merc train`` run folder with two or more modalities.
        data_root: Folder with the real corpora.
        device: Training device of the alone runs.
        show_progress: Progress bars.
        dataset: The dataset the run was trained on, when it is not a registered name
            or folder (e.g. generated in a test); default: the run's ``data.dataset_arg``.

    Returns:
        The ``unimodal_vs_alone.json`` content: per modality the joint head's and the
        alone model's test weighted F1 and accuracy (mean, std, per seed) and
        ``gap_weighted_f1`` (alone - joint, mean over seeds, and per seed).

    Raises:
        ConfigError: Not a run folder, one modality only, or no unimodal scores.
    """
    from merc.config import save_yaml
    from merc.training.runner import open_run_folder, run_experiment

    run, recipe, info = open_run_folder(run_dir)
    joint = joint_unimodal_scores(run)
    modalities = info["modalities"]
    if len(modalities) < 2:
        raise ConfigError(f"{run} was trained on {modalities!r} only: there is nothing to compare alone")
    seeds, dataset_arg, model = list(info["seeds"]), info["dataset_arg"], info["model_name"]
    alone_dir = run / ALONE_DIR
    alone_dir.mkdir(exist_ok=True)
    recipe_file = alone_dir / "recipe.yaml"
    save_yaml(alone_recipe(recipe), recipe_file)
    rows: dict[str, Any] = {}
    for m in modalities:
        result = run_experiment(
            model,
            dataset if dataset is not None else dataset_arg,
            m,
            seeds,
            alone_dir / m,
            data_root=data_root,
            recipe_path=recipe_file,
            device=device,
            show_progress=show_progress,
        )
        alone = result["test"]
        joint_m = joint.get(m) or {}
        gaps = [
            a - j
            for a, j in zip(
                alone["weighted_f1"]["per_seed"], (joint_m.get("weighted_f1") or {}).get("per_seed") or [], strict=False
            )
        ]
        rows[m] = {
            "joint": {k: joint_m[k] for k in ("weighted_f1", "accuracy") if k in joint_m},
            "alone": {k: alone[k] for k in ("weighted_f1", "accuracy") if k in alone},
            "gap_weighted_f1": {"mean": sum(gaps) / len(gaps) if gaps else None, "per_seed": gaps},
        }
    report = {
        "run": str(run),
        "model": model,
        "dataset": dataset_arg,
        "modalities": modalities,
        "seeds": seeds,
        "rows": rows,
    }
    write_alone_report(report, run)
    return report


def alone_markdown(report: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table."""
    from merc.evaluation.aggregate import format_mean_std

    lines = [
        f"# Unimodal heads inside {report['model']} ({report['modalities']}) vs each modality alone",
        "",
        f"dataset `{report['dataset']}`, seeds {', '.join(str(s) for s in report['seeds'])}, test weighted F1 (%)",
        "",
        "| modality | joint model's head | trained alone | gap (alone - joint) |",
        "|---|---|---|---|",
    ]
    for m, row in report["rows"].items():
        joint = format_mean_std(row["joint"]["weighted_f1"]) if "weighted_f1" in row["joint"] else "-"
        alone = format_mean_std(row["alone"]["weighted_f1"])
        gap = row["gap_weighted_f1"]["mean"]
        lines.append(f"| {m} | {joint} | {alone} | {'-' if gap is None else f'{gap:+.2f}'} |")
    lines += [
        "",
        "A large positive gap: the joint model under-uses a modality it could learn (imbalance). "
        "A gap near zero with a low score: the modality is weak, not neglected.",
    ]
    return "\n".join(lines) + "\n"


def plot_alone(report: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: joint head vs alone, per modality (error bars: std over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mods = list(report["rows"])
    fig = Figure(figsize=(1.8 + 1.6 * len(mods), 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, (key, label) in enumerate((("joint", "head in the joint model"), ("alone", "trained alone"))):
        means = [report["rows"][m][key].get("weighted_f1", {}).get("mean", float("nan")) for m in mods]
        stds = [report["rows"][m][key].get("weighted_f1", {}).get("std", 0.0) for m in mods]
        ax.bar([i + (k - 0.5) * 0.38 for i in range(len(mods))], means, 0.38, yerr=stds, capsize=3, label=label)
    ax.set_xticks(range(len(mods)), mods)
    ax.set_ylabel("test weighted F1 (%)")
    ax.set_title(f"{report['model']} on {report['dataset']}: unimodal heads vs alone", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_alone_report(report: Mapping[str, Any], run: Path) -> dict[str, Path]:
    """``unimodal_vs_alone.{json,md,png}`` in the run folder (atomic writes)."""
    from merc.training.run_folder import atomic_write_json, atomic_write_text

    paths = {
        "json": run / f"{REPORT_STEM}.json",
        "md": run / f"{REPORT_STEM}.md",
        "png": run / f"{REPORT_STEM}.png",
    }
    atomic_write_json(paths["json"], dict(report))
    atomic_write_text(paths["md"], alone_markdown(report))
    plot_alone(report, paths["png"])
    return paths


__all__ = ["ALONE_DIR", "alone_markdown", "alone_recipe", "compare_with_alone", "joint_unimodal_scores"]
