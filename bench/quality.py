"""Benchmark: hashtag quality of every ranker on the shared flowers photos, through `dvc repro`.

    .venv/bin/python -m bench.quality [--captions clean noisy] [--work DIR] [--out bench/results]

A copy of the project is configured for the flowers folder of ../shared (MobileNet 1.0 ImageNet
weights at 128 px; every other value is params.yaml's default) and runs the real pipeline:
scrape, featurize, the content split and the outlier rule of clean, train's default search and
ranking choice, evaluate. It runs once per caption set:
- `clean`: the folder's posts.jsonl (class, colour and generic tags on every post);
- `noisy`: posts-noisy.jsonl, whose captions follow real Instagram posts (a third with the class
  tag only, generic tags, missing class tags, colour tags on some posts, a long tail, and two
  classes without captions).
The second set reuses the first one's feature store, so it costs a train and an evaluate.
For each it records the test split's classifier accuracy and every ranker's P@1, R@5, A@5 and
R@10 (as evaluate wrote them to reports/metrics.json), the served ranking's choice, and the
colour-tag recall@10 of the served ranking and of the class mixture (colour tags are read from
the petals: only a ranker that looks at the image can find them).

The flowers end-to-end test (tests/e2e/test_flowers_accuracy.py) calls `measure` too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.results_io import in_order

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FLOWERS = SHARED / "datasets" / "flowers"
WEIGHTS = SHARED / "weights" / "mobilenet_v1_1.0_imagenet_no_top.weights.h5"
CAPTIONS = {"clean": "posts.jsonl", "noisy": "posts-noisy.jsonl"}
METRICS = (
    "hashtag_precision_at_1",
    "hashtag_recall_at_5",
    "hashtag_accuracy_at_5",
    "hashtag_recall_at_10",
)
# tags read from the petals in the posts files (../shared/README.md): a colour, or colour+flowers
COLOURS = ("red", "orange", "yellow", "white", "pink", "blue", "purple")
COLOUR_TAGS = frozenset(tag for colour in COLOURS for tag in (colour, f"{colour}flowers"))


def flowers_folder(work: Path, captions: str) -> Path:
    """A folder source for the flowers photos with the given caption set as its posts.jsonl."""
    folder = work / f"flowers-{captions}"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in FLOWERS.iterdir():
        if entry.is_dir() and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry, target_is_directory=True)
    posts = folder / "posts.jsonl"
    posts.unlink(missing_ok=True)
    posts.symlink_to(FLOWERS / CAPTIONS[captions])
    return folder


def prepare_repo(repo: Path) -> Path:
    """A copy of the project at `repo`, committed to git, configured for the flowers photos."""
    from tests.helpers.repocopy import copy_source_tree

    copy_source_tree(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["base"]["classes"] = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    params["scrape"]["source"] = "folder"
    params["model"].update(backbone="mobilenet", image_size=128, weights=str(WEIGHTS))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        [
            "git",
            "-c",
            "user.email=bench@taglens",
            "-c",
            "user.name=bench",
            "commit",
            "-qm",
            "flowers",
        ],
    ):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    return repo


def repro(repo: Path, folder: Path) -> float:
    """Point scrape at `folder` and run `dvc repro`; return its wall seconds."""
    from tests.helpers.stages import DVC, stage_env

    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["scrape"]["folder"] = str(folder)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    result = subprocess.run(
        [DVC, "repro"], cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=3600
    )
    (repo / f"repro-{folder.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(
            f"dvc repro failed in {repo}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return time.perf_counter() - start


def test_rankings(repo: Path, k: int = 10) -> dict[str, Any]:
    """Served, popularity and class-mixture rankings of the test posts, compared post by post.

    Returns:
        `colour_recall_at_10`: per test post that carries colour tags, the share of them in the
        top k, averaged, for the served ranking and the class mixture; `paired`: per floor
        (popularity, class mixture) and metric, the served ranking's mean difference from it and
        the standard error of that paired per-post difference.
    """
    import numpy as np
    import pandas as pd

    from taglens.data.images import image_dataset
    from taglens.data.posts import read_posts
    from taglens.model.hashtags import own_tags
    from taglens.model.predictor import HashtagPredictor
    from taglens.model.rankers import post_scores, tag_matrix
    from taglens.training.search import mean_se

    predictor = HashtagPredictor.from_dir(repo / "models")
    manifest = pd.read_csv(repo / "data" / "clean" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    posts = {post.sha256: post for post in read_posts(repo / "data" / "raw" / "posts.jsonl")}
    tags = [own_tags(posts[sha]) for sha in test["sha256"]]
    outputs: dict[str, list] = {}
    paths = [repo / "data" / "raw" / image for image in test["image"]]
    for batch in image_dataset(paths, predictor.image_size, 64):
        for key, value in predictor.outputs(batch.numpy()).items():
            outputs.setdefault(key, []).append(value)
    joined = {key: np.concatenate(parts) for key, parts in outputs.items()}
    stats = predictor.stats
    params = predictor.params
    scores = predictor.rankers.ranker_scores(stats, params, joined["probabilities"])
    final = {
        "served": predictor.final_scores(joined)[0],
        "popularity": stats.finish(scores["popularity"], params),
        "class_mixture": stats.finish(scores["class_mixture"], params),
    }
    truth = tag_matrix(tags, stats.tags)
    n_truth = np.array([len(t) for t in tags])
    per_post = {name: post_scores(f, truth, n_truth, params.top_k) for name, f in final.items()}
    paired = {
        floor: {
            key: {
                "difference": float((per_post["served"][key] - per_post[floor][key]).mean()),
                "se": mean_se(per_post["served"][key] - per_post[floor][key]),
            }
            for key in per_post["served"]
        }
        for floor in ("popularity", "class_mixture")
    }
    colours = [own & COLOUR_TAGS for own in tags]

    def recall(name: str) -> float:
        ranked = [[item["tag"] for item in row] for row in stats.rank_scores(final[name], params)]
        shares = [
            len(own & set(row[:k])) / len(own)
            for row, own in zip(ranked, colours, strict=True)
            if own
        ]
        return float(np.mean(shares)) if shares else float("nan")

    colour = {
        "served": recall("served"),
        "class_mixture": recall("class_mixture"),
        "posts": sum(1 for own in colours if own),
    }
    return {"colour_recall_at_10": colour, "paired": paired}


def read_quality(repo: Path) -> dict[str, Any]:
    """The figures of one run: accuracy, every ranker's row, the choice and colour recall."""
    from taglens.model.rankers import RANKERS

    metrics = json.loads((repo / "reports" / "metrics.json").read_text(encoding="utf-8"))
    train = json.loads((repo / "reports" / "train.json").read_text(encoding="utf-8"))
    rows = {"served": {key: metrics.get(key) for key in METRICS}}
    for name in RANKERS:
        rows[name] = {key: metrics.get(f"{name}_{key}") for key in METRICS}
    return {
        "accuracy": metrics["accuracy"],
        "baseline_accuracy": train.get("baseline_test_accuracy"),
        "n_test": metrics["n_test"],
        "hashtag_posts": metrics.get("hashtag_n"),
        "rankers": rows,
        "choice": metrics.get("hashtag_ranking"),
        # the views featurize cached, and the test-time views train chose on validation
        # (train.crops) with why
        "featurize_views": json.loads(
            (repo / "data" / "features" / "meta.json").read_text(encoding="utf-8")
        )["views"],
        "views": train.get("views"),
        # whether the head reads the colour view (train.colour), chosen on validation, and why
        "head_colour": train.get("head_colour"),
        "val_accuracy": train.get("val_accuracy"),
        "tail": ((train.get("hashtags_val") or {}).get("choice") or {})
        .get("search", {})
        .get("tail"),
        **test_rankings(repo),
    }


def measure(work: Path, captions: tuple[str, ...] = ("clean", "noisy")) -> dict[str, Any]:
    """Run the pipeline on the flowers photos once per caption set; return each set's figures."""
    repo = work / "repo"
    if not (repo / "dvc.yaml").exists():
        prepare_repo(repo)
    results = {}
    for name in captions:
        seconds = repro(repo, flowers_folder(work, name))
        results[name] = {**read_quality(repo), "repro_seconds": round(seconds, 1)}
    return results


def to_markdown(result: dict[str, Any]) -> str:
    """The markdown tables of a saved result: every ranker side by side per caption set.

    Served first, then the rankers in the rankers module's order, as `read_quality` reads them.
    """
    from taglens.model.rankers import RANKERS

    lines = []
    for name, figures in result["results"].items():
        choice = figures.get("choice") or {}
        lines += [
            f"**{name} captions** (test top-1 {figures['accuracy']:.3f} on {figures['n_test']} "
            f"photos; {figures['hashtag_posts']} test posts with hashtags; served: "
            f"{choice.get('served', '?')} of {', '.join(choice.get('rankers', []))})",
            "",
            "| ranking (test) | P@1 | R@5 | A@5 | R@10 |",
            "|---|---|---|---|---|",
        ]
        for ranker, row in in_order(figures["rankers"].items(), ("served", *RANKERS)):
            cells = " | ".join("" if row[key] is None else f"{row[key]:.3f}" for key in METRICS)
            lines.append(f"| {ranker.replace('_', ' ')} | {cells} |")
        colour = figures["colour_recall_at_10"]
        lines += [
            "",
            f"Colour-tag recall@10: served {colour['served']:.3f}, class mixture "
            f"{colour['class_mixture']:.3f} ({colour['posts']} test posts with colour "
            "tags).",
        ]
        head_colour = figures.get("head_colour")
        if head_colour and head_colour.get("val_accuracy"):
            accuracy = head_colour["val_accuracy"]
            lines += [
                f"Head input: {'vectors + colour view' if head_colour['colour'] else 'vectors'} "
                f"(validation accuracy {accuracy['vectors']:.4f} on the vectors alone, "
                f"{accuracy['vectors+colour']:.4f} with the colour view, paired SE "
                f"{head_colour['difference_se']:.4f}).",
            ]
        views = figures.get("views")
        if views and views.get("val_accuracy"):
            accuracy = views["val_accuracy"]
            lines += [
                f"Test-time views served: {' + '.join(views['served'])} (validation accuracy",
                f"{accuracy['image']:.4f} without the crops, {accuracy['image+crops']:.4f} with "
                f"them, paired SE {views['difference_se']:.4f}).",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the quality benchmark and write bench/results/quality.{json,md}."""
    from bench.results_io import save_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", nargs="+", default=list(CAPTIONS), choices=list(CAPTIONS))
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the project copy (default: a temporary folder)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not FLOWERS.is_dir():
        parser.error(f"no flowers photos at {FLOWERS}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="taglens-quality-") as scratch:
        work = args.work or Path(scratch)
        results = measure(work, tuple(args.captions))
    result = {
        "command": "python -m bench.quality",
        "backbone": "mobilenet 1.0, 128 px",
        "load_average_1m": round(os.getloadavg()[0], 1),
        "results": results,
    }
    save_results(args.out, "quality", result, to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
