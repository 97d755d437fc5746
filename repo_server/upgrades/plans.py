"""Plans: the ordered steps of a change to one node, built from a passing preflight.

Step names and parameters are the contract with the agent (docs/agent-protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from repo_server.catalog.models import Artifact
from repo_server.catalog.release_manifest import signed_params
from repo_server.catalog.release_models import Release
from repo_server.upgrades.preflight import Verdict

# The 90 s systemd timeout is not a failure; NSO gets this long (nominal seconds) to start.
START_TIMEOUT = 1800
# From this step on a failure has changed the node: the job appends its recovery step.
POINT_OF_NO_RETURN = {"upgrade": "stop", "package_upgrade": "install_packages"}


@dataclass
class StepSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    title: str = ""


def artifact_ref(artifact: Artifact) -> dict[str, Any]:
    return {
        "filename": artifact.filename,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "url": f"/api/v1/blobs/{artifact.sha256}",
    }


def upgrade_steps(verdict: Verdict, release: Release) -> list[StepSpec]:
    """The guide's Single Instance Upgrade, with the installer and packages staged first."""
    packages = [artifact_ref(a) for a in verdict.packages]
    target = release.nso_version
    steps = [
        StepSpec(
            "prestage",
            {
                "installer": artifact_ref(release.installer),
                "packages": packages,
                "target_version": target,
                **signed_params(release),
            },
            f"download and verify NSO {target} and {len(packages)} packages; install {target} beside the running release",
        ),
        StepSpec(
            "backup",
            {},
            "ncs-backup, read back to prove it, plus a copy of the package files and links it skips",
        ),
        StepSpec("stop", {}, "stop NSO"),
        StepSpec(
            "restore_point",
            {},
            "copy the stopped NSO's data and configuration (every acknowledged write), "
            "proven by checksum: what a recovery restores",
        ),
        StepSpec("compact", {}, "compact the CDB write log"),
        StepSpec(
            "switch_current", {"target_version": target}, f"point /opt/ncs/current at ncs-{target}"
        ),
    ]
    if verdict.remove_ncs_conf:
        steps.append(
            StepSpec(
                "ncs_conf",
                {"remove_elements": verdict.remove_ncs_conf},
                f"remove {', '.join(verdict.remove_ncs_conf)} from ncs.conf",
            )
        )
    steps += [
        StepSpec(
            "relink_packages",
            {"packages": packages},
            "make /var/opt/ncs/packages hold exactly the target builds",
        ),
        StepSpec("start", {"start_timeout": START_TIMEOUT}, "start NSO with package reload"),
        StepSpec(
            "verify",
            {"target_version": target, "packages": packages},
            "check version, packages oper-status and data",
        ),
    ]
    return steps


# What a recovery needs from the job's context (the results of backup, stop, restore_point).
RECOVERY_CONTEXT = (
    "backup_file",
    "extra_dir",
    "restore_point",
    "restore_point_token",
    "saved_ncs_conf",
    "fingerprint",
    "stopped_at",
)


def recover_step(
    job_context: dict[str, Any],
    source_version: str,
    upgraded_to: str,
    target_started: bool,
    discard_writes: bool = False,
) -> StepSpec:
    """The guide's recovery, back to ``source_version`` from ``upgraded_to``.

    ``target_started``: the new release may have started on the data, so the restore point
    is restored (else the data is as NSO left it). ``discard_writes``: an operator's
    rollback, which stops a running NSO and takes its writes since the stop out of it; a
    job's own recovery never does.
    """
    return StepSpec(
        "recover",
        {
            "source_version": source_version,
            "upgraded_to": upgraded_to,
            "target_started": target_started,
            "discard_writes": discard_writes,
            **{key: job_context.get(key) for key in RECOVERY_CONTEXT},
        },
        f"point current back at ncs-{source_version}, restore the data as it was when NSO "
        "stopped for the upgrade, start, verify",
    )


def recovery_for(
    kind: str,
    job_context: dict[str, Any],
    source_version: str,
    upgraded_to: str,
    target_started: bool,
) -> StepSpec:
    if kind == "package_upgrade":
        return StepSpec(
            "recover_packages",
            {
                "backup_file": job_context.get("backup_file"),
                "extra_dir": job_context.get("extra_dir"),
            },
            "put the previous package links back and reload them",
        )
    return recover_step(job_context, source_version, upgraded_to, target_started)


def backup_step() -> StepSpec:
    return StepSpec("backup", {}, "ncs-backup, plus a copy of the package files and links it skips")


def package_upgrade_steps(
    packages: list[Artifact],
    allow_data_loss: bool,
    signed: Optional[Release] = None,
    remove: tuple[str, ...] = (),
) -> list[StepSpec]:
    """The guide's single-node Package Upgrade: stage, back up, install, reload, verify.

    ``signed``: a signed release holding every build, whose manifest the staging step
    carries for agents that install only signed releases. ``remove``: packages (by name) to
    deinstall in the same reload, such as the old NED after a major NED upgrade."""
    refs = [{**artifact_ref(a), "name": a.name, "version": a.version} for a in packages]
    names = ", ".join(f"{a.name} {a.version}" for a in packages)
    stage = {"packages": refs, **(signed_params(signed) if signed is not None else {})}
    change: dict[str, Any] = {"packages": refs, **({"remove": list(remove)} if remove else {})}
    removal = f"; software packages deinstall {', '.join(remove)}" if remove else ""
    return [
        *([StepSpec("prestage_packages", stage, f"download and verify {names}")] if refs else []),
        backup_step(),
        StepSpec(
            "install_packages",
            change,
            "software packages install package ... replace-existing" + removal,
        ),
        StepSpec(
            "reload_packages",
            # What the reload is to load: the agent judges by it when the answer is lost.
            {"allow_data_loss": allow_data_loss, **change},
            "packages reload (refused if NSO would delete data, unless allowed)",
        ),
        StepSpec(
            "verify_packages",
            change,
            "check versions and oper-status up" + (", and the removed ones gone" if remove else ""),
        ),
    ]
