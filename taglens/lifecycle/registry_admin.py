"""By-hand registry operations: promote, roll back, list versions (the admin CLI's library)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taglens.lifecycle.gate import CHAMPION
from taglens.lifecycle.registry import Registry
from taglens.lifecycle.registry_lock import RegistryError
from taglens.lifecycle.registry_tags import LINEAGE_TAG, METRIC_TAG, now_iso


def promote(registry: Registry, version: str | int, reason: str) -> dict[str, Any]:
    """Make `version` champion by hand, recording who, when and why."""
    if not reason.strip():
        raise RegistryError("a reason is required: --reason 'why this version'")
    with registry.lock():
        target = registry.version(version)
        previous = registry.alias(CHAMPION)
        registry.crown(target)
        registry.tag(
            target,
            {
                "decision": CHAMPION,
                "decision.reason": f"manual: {reason}",
                "decision.time": now_iso(),
            },
        )
        return registry.record(
            "promote", target, reason, previous=str(previous.version) if previous else None
        )


def champion_stack(registry: Registry) -> list[str]:
    """List champions in order from the registry's history: promotions push, rollbacks pop."""
    stack: list[str] = []
    for row in registry.history():
        if row.get("event") == "promote" or (
            row.get("event") == "register" and row.get("decision") == CHAMPION
        ):
            stack.append(str(row["version"]))
        elif row.get("event") == "rollback" and stack:
            stack.pop()
    return stack


def rollback(registry: Registry, reason: str) -> dict[str, Any]:
    """Give the champion alias back to the previous champion (per the history)."""
    if not reason.strip():
        raise RegistryError("a reason is required: --reason 'what went wrong'")
    with registry.lock():
        current = registry.alias(CHAMPION)
        stack = champion_stack(registry)
        if current is None or len(stack) < 2 or stack[-1] != str(current.version):
            raise RegistryError(
                f"nothing to roll back to: the registry's history of {registry.name} has no "
                "earlier champion; use `promote VERSION --reason ...` instead"
            )
        target = registry.version(stack[-2])
        registry.crown(target)
        registry.tag(current, {"rolled_back": reason, "decision.time": now_iso()})
        return registry.record("rollback", target, reason, previous=str(current.version))


def version_table(registry: Registry, metric: str) -> list[dict[str, Any]]:
    """Return one row per version: score, aliases, decision, run, date."""
    versions = registry.versions()
    aliases: dict[str, list[str]] = {}
    if versions:  # search results carry no aliases: read them from the registered model
        for alias, number in registry.client.get_registered_model(registry.name).aliases.items():
            aliases.setdefault(str(number), []).append(alias)
    rows = []
    for version in versions:
        rows.append(
            {
                "version": str(version.version),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))) or "-",
                metric: version.tags.get(METRIC_TAG + metric, "-"),
                "decision": version.tags.get("decision", "-"),
                "run_id": version.tags.get(LINEAGE_TAG + "run_id", "-"),
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "reason": version.tags.get("decision.reason", ""),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """`version_table` rows as aligned text columns, or what to do when there are none."""
    if not rows:
        return "no versions registered yet: run `dvc repro`"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = [[k.ljust(widths[k]) for k in keys]]
    lines += [[str(row[k]).ljust(widths[k]) for k in keys] for row in rows]
    return "\n".join("  ".join(cells) for cells in lines)
