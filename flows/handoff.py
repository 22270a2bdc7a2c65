"""The git side of the hand-off: commit dvc.lock and params.yaml after a retrain, and push them.

A retrain whose outputs changed leaves a new dvc.lock: the data, model and reports it names are
in the DVC remote (the flow's `dvc push` runs first), so once the commit is pushed another clone
runs `git pull && dvc pull` and has exactly those files (`dvc status` clean). The branch and
remote are params.yaml's `team.git_branch` and `team.git_remote`; with no branch nothing is
committed. No Prefect here: the training flow wraps it in a task and passes its run logger.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from taglens.errors import TaglensError
from taglens.lineage import repo_data_tags
from taglens.params import ParamsError, TeamParams

logger = logging.getLogger(__name__)

HANDED_OFF = ("dvc.lock", "params.yaml")
# Used only when the machine has no git identity (a fresh worker): the commit says who made it.
FALLBACK_IDENTITY = ("taglens retrain", "taglens@localhost")


class HandoffError(TaglensError):
    """A git step of the hand-off failed; the message holds git's own words."""


@dataclass(frozen=True)
class Handoff:
    """What the hand-off did: the commit pushed (None when outputs did not change)."""

    commit: str | None
    branch: str
    remote: str


def team_settings(params_path: Path) -> TeamParams | None:
    """params.yaml's `team:` section, or None when the file has none (nothing to hand off).

    Raises:
        ParamsError: the section is there but invalid (the message names the key).
    """
    raw = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict) or "team" not in raw:
        return None
    try:
        return TeamParams.model_validate(raw["team"])
    except ValueError as exc:
        raise ParamsError(f"{params_path}: invalid team section: {exc}") from None


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise HandoffError(
            f"git {' '.join(args)} failed in {repo}: {(done.stderr or done.stdout).strip()[-500:]}"
        )
    return done


def _identity(repo: Path) -> list[str]:
    """`-c user.name=... -c user.email=...` when the checkout has no identity of its own."""
    if _git(repo, "config", "user.email", check=False).stdout.strip():
        return []
    name, email = FALLBACK_IDENTITY
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def commit_and_push(
    repo: Path, branch: str, remote: str, *, log: logging.Logger | logging.LoggerAdapter = logger
) -> Handoff:
    """Commit dvc.lock and params.yaml if they changed, and push the branch to `remote`.

    Raises:
        HandoffError: the checkout is not a git repository, or a git step failed (a rejected
            push, say: pull first); nothing is lost, the commit stays local.
    """
    if _git(repo, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise HandoffError(
            f"{repo} is not a git checkout: team.git_branch needs one "
            "(set it to null to skip the commit)"
        )
    changed = _git(repo, "status", "--porcelain", "--", *HANDED_OFF).stdout.strip()
    if not changed:
        log.info("dvc.lock and params.yaml unchanged: nothing to commit")
        _git(repo, "push", remote, f"HEAD:refs/heads/{branch}")
        return Handoff(None, branch, remote)
    _git(repo, "add", "--", *HANDED_OFF)
    version = repo_data_tags(repo).get("lineage.data_version", "unknown")
    message = (
        f"Retrain: dvc.lock and params.yaml of data version {version}\n\n"
        "The data, model and reports it names are in the DVC remote: "
        "`git pull && dvc pull`."
    )
    _git(repo, *_identity(repo), "commit", "-m", message, "--", *HANDED_OFF)
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    _git(repo, "push", remote, f"HEAD:refs/heads/{branch}")
    log.info(
        "committed %s (dvc.lock, params.yaml) and pushed it to %s %s", commit[:12], remote, branch
    )
    return Handoff(commit, branch, remote)
