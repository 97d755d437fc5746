"""Major NED upgrades: moving devices to a new ned-id with NSO's ``migrate`` action.

The guide's procedure: the new NED package is loaded beside the old one (a package upgrade
that adds it), devices migrate to its ned-id, and a later package upgrade removes the old
NED. Here each migration is a one-step job on one node (kind ``ned_migration``, step
``ned_migrate``): first a dry-run, whose per-device result (modified paths, data that would
be lost) the operator reads; then the real migration, which must name that dry-run
(``confirm``): it succeeded, on this node, for exactly these devices, groups and ned-id, and
nothing has run on the node since. Every request is audited, refused ones too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from repo_server.auth.service import Principal, audit, audit_refusal
from repo_server.catalog.models import Artifact
from repo_server.db import utcnow
from repo_server.errors import AppError, Conflict, ValidationFailed
from repo_server.fleet.models import Node
from repo_server.fleet.notify import Notifier, announce
from repo_server.fleet.service import get_node
from repo_server.upgrades.jobs import JobService, only_looked
from repo_server.upgrades.models import Job, Step
from repo_server.upgrades.plans import StepSpec
from repo_server.upgrades.preflight import inventory_stale

KIND = "ned_migration"
STEP = "ned_migrate"
MAX_DEVICES = 200
MAX_GROUPS = 20
# What the agent accepts (agent/ned.py): names that go into NSO CLI text as they are.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
NED_ID = re.compile(r"(?:[A-Za-z][A-Za-z0-9_.-]*:)?[A-Za-z][A-Za-z0-9_.-]*", re.ASCII)


class DryRunRequired(Conflict):
    code = "dry_run_required"


class NedIdNotLoaded(Conflict):
    code = "ned_id_not_loaded"


class NodeNotReady(Conflict):
    code = "node_not_ready"


class JobActive(Conflict):
    code = "job_active"


@dataclass(frozen=True)
class MigrationRequest:
    node: str
    new_ned_id: str
    devices: tuple[str, ...]
    device_groups: tuple[str, ...]
    dry_run: bool
    confirm: Optional[int] = None

    def targets(self) -> dict[str, Any]:
        """What a dry-run and the migration that confirms it must agree on."""
        return {
            "new_ned_id": self.new_ned_id,
            "devices": sorted(self.devices),
            "device_groups": sorted(self.device_groups),
        }


class NedMigrationService:
    def __init__(
        self, session: Session, notifier: Notifier, dry_run_max_age: int = 24 * 3600
    ) -> None:
        self.session = session
        self.notifier = notifier
        self.dry_run_max_age = dry_run_max_age  # seconds (NSO_REPO_NED_DRY_RUN_MAX_AGE)
        self.jobs = JobService(session, notifier)

    def start(self, request: MigrationRequest, who: Principal) -> Job:
        """Queue the migration (or its dry-run) and wake the node's agent; refused with a
        4xx that says why, and audited either way."""
        try:
            return self._start(request, who)
        except AppError as exc:
            audit_refusal(
                self.session,
                who.actor,
                "ned.migrate_refused",
                f"node:{request.node[:200]}",
                exc,
                **_described(request),
            )
            raise

    def _start(self, request: MigrationRequest, who: Principal) -> Job:
        _check_request(request)
        node = get_node(self.session, request.node)
        self.jobs.lock_node(node)
        active = self.jobs.active_job(node)
        if active is not None:
            raise JobActive(
                f"job {active.id} ({active.kind}) holds {node.name} now: wait for it "
                f"('nso-repo job watch {active.id}') and try again",
                job=active.id,
            )
        running = _check_node(node)
        _check_ned_id_loaded(self.session, node, request.new_ned_id)
        start_by: dict[str, str] = {}
        shown: Optional[dict[str, Optional[str]]] = None
        loss: Optional[dict[str, Any]] = None
        if not request.dry_run:
            dry = self._check_confirmation(node, request)
            shown = _devices_shown(dry)
            loss = _loss_shown(dry)
            # The dry-run's result holds until then, also for an agent that asks late.
            limit = (dry.finished_at or dry.created_at) + timedelta(seconds=self.dry_run_max_age)
            start_by = {"start_by": limit.isoformat()}
        spec = migrate_step(request, shown, loss)
        # What the dry-run showed lost rides in the step only: the plan says which job.
        planned = {k: v for k, v in spec.params.items() if k != "expected_lost_data"}
        job = Job(
            kind=KIND,
            source_version=running,
            target_version=running,
            options={**planned, "confirm": request.confirm, **start_by},
            plan={"node": node.name, **planned, "confirms": request.confirm},
            created_by=who.actor,
        )
        job.steps = [
            Step(seq=1, node_id=node.id, name=spec.name, params=spec.params, message=spec.title)
        ]
        self.jobs.hold(job, [node])
        audit(self.session, who.actor, "ned.migrate", f"job:{job.id}", **_described(request))
        announce(self.session, self.notifier, node.id)
        self.session.commit()
        return job

    def _check_confirmation(self, node: Node, request: MigrationRequest) -> Job:
        """The dry-run ``confirm`` names: a succeeded dry-run of exactly this migration on
        this node, with nothing run on the node since (its result still describes it)."""
        again = (
            "run the dry-run (dry_run true, or 'nso-repo ned migrate ... --dry-run'), read "
            "its result ('nso-repo ned show ID'), then confirm it with its job id"
        )
        if request.confirm is None:
            raise DryRunRequired(
                f"a migration of devices to {request.new_ned_id} needs the id of the dry-run "
                f"it confirms (confirm): {again}"
            )
        dry = self.session.get(Job, request.confirm)
        options = dry.options if dry is not None else {}
        same = (
            dry is not None
            and dry.kind == KIND
            and options.get("dry_run") is True
            and [n.name for n in dry.nodes] == [node.name]
            and {k: options.get(k) for k in ("new_ned_id", "devices", "device_groups")}
            == request.targets()
        )
        if dry is None or not same:
            raise DryRunRequired(
                f"job {request.confirm} is not a dry-run of this migration (node {node.name}, "
                f"{_targets_text(request)}): {again}",
                confirm=request.confirm,
            )
        if dry.state != "succeeded":
            raise DryRunRequired(
                f"dry-run job {dry.id} is {dry.state}, not succeeded: "
                + ("wait for it ('nso-repo job watch ID')" if dry.active else again),
                confirm=dry.id,
            )
        finished = dry.finished_at or dry.created_at
        age = (utcnow() - finished).total_seconds()
        if age > self.dry_run_max_age:
            raise DryRunRequired(
                f"dry-run job {dry.id} ended {int(age)} s ago, more than the "
                f"{self.dry_run_max_age} s a dry-run's result holds "
                "(NSO_REPO_NED_DRY_RUN_MAX_AGE): the devices' configuration may have changed "
                f"through NSO since; {again}",
                confirm=dry.id,
            )
        for other in self.jobs.later_jobs([node], dry.id):
            confirmed = (
                other.options.get("confirm") == dry.id and other.options.get("dry_run") is False
            )
            if other.kind == KIND and confirmed:
                raise DryRunRequired(
                    f"dry-run job {dry.id} was confirmed already, by job {other.id} "
                    f"({other.state}): {again}",
                    confirm=dry.id,
                )
            newer = (
                other.kind == KIND
                and other.state == "succeeded"
                and other.options.get("dry_run") is True
                and {k: other.options.get(k) for k in ("new_ned_id", "devices", "device_groups")}
                == request.targets()
            )
            if newer:
                # Its result is what the devices would lose now; the older one's may not be.
                raise DryRunRequired(
                    f"dry-run job {other.id}, of the same migration, ran after dry-run job "
                    f"{dry.id}: read its result ('nso-repo ned show {other.id}') and confirm "
                    "that one",
                    confirm=other.id,
                )
            # A later dry-run that may have changed the node (it needs attention) voids
            # this one's result, as any other job does.
            if not only_looked(other):
                raise DryRunRequired(
                    f"job {other.id} ({other.kind}) ran on {node.name} after dry-run job "
                    f"{dry.id}, whose result may no longer hold: {again}",
                    confirm=dry.id,
                )
        return dry


def migrate_step(
    request: MigrationRequest,
    shown: Optional[dict[str, Optional[str]]] = None,
    loss: Optional[dict[str, Any]] = None,
) -> StepSpec:
    """The job's one step: the agent's ``ned_migrate`` (docs/agent-protocol.md); a confirmed
    migration names the devices its dry-run showed (``expected_devices``), which the agent
    checks its device groups still resolve to, the ned-id each was on then
    (``expected_ned_ids``), which the agent checks each is still on, and the data each
    would lose (``expected_lost_data``), which a dry-run the agent runs right before must
    not exceed, before it migrates anything."""
    what = "dry-run of the migration" if request.dry_run else "migration"
    named = ", ".join([*request.devices, *(f"group {g}" for g in request.device_groups)])
    expected: dict[str, Any] = (
        {} if shown is None else {"expected_devices": list(shown), "expected_ned_ids": shown}
    )
    if loss is not None:
        expected["expected_lost_data"] = loss
    return StepSpec(
        STEP,
        {**request.targets(), "dry_run": request.dry_run, **expected},
        f"{what} of {named[:300]} to {request.new_ned_id}",
    )


def _devices_shown(dry: Job) -> dict[str, Optional[str]]:
    """The devices the dry-run's result showed the operator, every one of them, each with
    the ned-id it was on; refused when the result is not a whole dry-run (what an agent
    reported is checked here too)."""
    result = next((s.result for s in dry.steps if s.name == STEP), None) or {}
    found = result.get("ned_migration")
    entries = found.get("devices") if isinstance(found, dict) else None
    again = "run the dry-run again and confirm that one"
    if not isinstance(found, dict) or found.get("dry_run") is not True or not entries:
        raise DryRunRequired(
            f"dry-run job {dry.id} reported no dry-run result to confirm: {again}",
            confirm=dry.id,
        )
    if found.get("new_ned_id") != dry.options.get("new_ned_id") or not all(
        isinstance(e, dict) and e.get("state") in ("dry_run", "already") for e in entries
    ):
        # What an agent reported is held to what the dry-run asked: no device migrated in
        # it, none to another ned-id.
        raise DryRunRequired(
            f"dry-run job {dry.id}'s result is not a dry-run to {dry.options.get('new_ned_id')} "
            f"(its agent reported devices migrated, or another ned-id): {again}",
            confirm=dry.id,
        )
    names = [e.get("device") if isinstance(e, dict) else None for e in entries]
    olds = [e.get("old_ned_id") if isinstance(e, dict) else None for e in entries]
    if not all(o is None or (isinstance(o, str) and _known_ned_id(o)) for o in olds):
        raise DryRunRequired(
            f"dry-run job {dry.id}'s result names a device's ned-id that is not one: {again}",
            confirm=dry.id,
        )
    if (
        len(set(names)) != len(names)
        or len(names) != found.get("devices_total")
        or not all(isinstance(n, str) and NAME.fullmatch(n) for n in names)
    ):
        raise DryRunRequired(
            f"dry-run job {dry.id}'s result does not list every device it covers (it shows "
            f"{len(names)} of {found.get('devices_total')}): a migration is confirmed only "
            "for devices the operator was shown; split it into smaller migrations (fewer "
            f"devices or groups each) and {again}",
            confirm=dry.id,
        )
    return {str(n): o for n, o in zip(names, olds)}


def _loss_shown(dry: Job) -> dict[str, Any]:
    """By device, the data the dry-run showed its migration loses: how many lost-data
    blocks NSO printed and those the result carries (all of them unless it was cut short),
    each ``path``, ``info`` and ``value`` as the agent reported them. `_devices_shown` has
    checked the result is a whole dry-run."""
    result = next((s.result for s in dry.steps if s.name == STEP), None) or {}
    entries = (result.get("ned_migration") or {}).get("devices") or []
    loss: dict[str, Any] = {}
    for entry in entries:
        blocks = [
            {k: v for k, v in b.items() if k in ("path", "info", "value") and isinstance(v, str)}
            for b in entry.get("lost_data") or []
            if isinstance(b, dict)
        ]
        total = entry.get("lost_data_total")
        total = total if isinstance(total, int) and not isinstance(total, bool) else len(blocks)
        loss[str(entry.get("device"))] = {"total": max(total, len(blocks)), "blocks": blocks}
    return loss


def _known_ned_id(value: str) -> bool:
    return len(value) <= 128 and ".." not in value and NED_ID.fullmatch(value) is not None


def _check_request(request: MigrationRequest) -> None:
    ned_id = request.new_ned_id
    if not _known_ned_id(ned_id):
        raise ValidationFailed(
            f"new_ned_id {request.new_ned_id[:140]!r} is not a ned-id: ASCII letters, digits "
            "and _ . - as NSO shows it (show packages ... ned-id), e.g. router-nc-2.0",
            field="new_ned_id",
        )
    if not request.devices and not request.device_groups:
        raise ValidationFailed(
            "name the devices to migrate (devices) or their device groups (device_groups): "
            "both are empty",
            field="devices",
        )
    if request.dry_run and request.confirm is not None:
        # A dry-run confirms nothing: taken as a confirmation, it would use up the dry-run
        # it names, and the real migration confirming it would be refused.
        raise ValidationFailed(
            "confirm names the dry-run a migration confirms: a dry-run takes none; send the "
            "dry-run without confirm, or the migration (dry_run false) with it",
            field="confirm",
        )
    for key, names, most in (
        ("devices", request.devices, MAX_DEVICES),
        ("device_groups", request.device_groups, MAX_GROUPS),
    ):
        if len(names) > most:
            raise ValidationFailed(
                f"{len(names)} {key} named, at most {most} per migration: split it into "
                "several migrations (or use a device group)",
                field=key,
            )
        bad = [n for n in names if not NAME.fullmatch(n) or ".." in n]
        if bad:
            raise ValidationFailed(
                f"{key} {bad[0][:140]!r} is refused: a name is ASCII letters, digits and "
                "_ . - (starting with a letter or digit), at most 128; the agent puts it "
                "into NSO's CLI as it is. Migrate devices with other names by hand",
                field=key,
            )
        if len(set(names)) != len(names):
            raise ValidationFailed(f"a name is given twice in {key}: name each once", field=key)


def _check_node(node: Node) -> Optional[str]:
    """The node can migrate now: its agent reports, NSO runs, and it is not an HA
    secondary (which takes its data from the primary). Its running version."""
    inv: dict[str, Any] = node.inventory or {}
    if node.inventory_at is None:
        raise NodeNotReady(
            f"{node.name} never reported: start and enroll nso-agent on it ('nso-agent status')"
        )
    if inventory_stale(node.inventory_at):
        raise NodeNotReady(
            f"{node.name} has not reported in the last 5 minutes: check that nso-agent runs "
            "on the host ('nso-agent status') and can reach the server"
        )
    if inv.get("status") != "started":
        raise NodeNotReady(
            f"NSO on {node.name} is not running (status {inv.get('status')!r}): start it; "
            "migrate runs in NSO"
        )
    ha = inv.get("ha")
    if isinstance(ha, dict) and ha.get("mode") == "secondary":
        raise NodeNotReady(
            f"{node.name} is an HA secondary: migrate on its primary, whose changes reach "
            "every secondary"
        )
    running = inv.get("running_version")
    return str(running) if running else None


def _check_ned_id_loaded(session: Session, node: Node, ned_id: str) -> None:
    """Refuse a ned-id that no package the node runs provides, when the catalog knows every
    package the node reports (else the agent learns it from NSO's own refusal)."""
    packages = (node.inventory or {}).get("packages")
    if not isinstance(packages, list) or not packages:
        return
    files = [p.get("file") for p in packages if isinstance(p, dict)]
    if not all(isinstance(f, str) for f in files):
        return
    found = {
        a.filename: a for a in session.scalars(select(Artifact).where(Artifact.filename.in_(files)))
    }
    if set(files) - set(found):
        return
    up = {p["file"] for p in packages if p.get("oper_status") in (None, "up")}
    loaded = sorted({str(n) for f in up for n in (found[f].meta or {}).get("ned_ids") or []})
    if ned_id.rsplit(":", 1)[-1] not in loaded:
        raise NedIdNotLoaded(
            f"no package {node.name} runs provides ned-id {ned_id} (it has "
            f"{', '.join(loaded) or 'none'}): add its NED package beside the old one first "
            "('nso-repo node upgrade-packages NODE --package ...'), then migrate",
            loaded=loaded,
        )


def _targets_text(request: MigrationRequest) -> str:
    parts = [f"devices {', '.join(sorted(request.devices))}"] if request.devices else []
    if request.device_groups:
        parts.append(f"device groups {', '.join(sorted(request.device_groups))}")
    return " and ".join(parts) + f" to {request.new_ned_id}"


def _described(request: MigrationRequest) -> dict[str, Any]:
    """The request as the audit keeps it (bounded: a refused one may be anything)."""
    return {
        "node": request.node[:200],
        "new_ned_id": request.new_ned_id[:200],
        "devices": [d[:200] for d in request.devices[:MAX_DEVICES]],
        "device_groups": [g[:200] for g in request.device_groups[:MAX_GROUPS]],
        "dry_run": request.dry_run,
        "confirm": request.confirm,
    }
