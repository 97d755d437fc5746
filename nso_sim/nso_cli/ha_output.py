"""Output of ``show high-availability`` and ``packages ha sync``, from what the HA manager
reports."""

from __future__ import annotations

from nso_sim.ha.manager import Alarm, HaStatus, SyncReport
from nso_sim.nso_cli.render import NO_ENTRIES, RELOAD_BANNER, quote, reload_blocks, table


def show_ha_lines(st: HaStatus, args: list[str]) -> list[str]:
    """``show high-availability [status [LEAF]]`` in the order and layout of real NSO 6.x
    (mode, current-id, assigned-role, be-secondary-result, primary-id, read-only-mode,
    then the connected secondaries as an ``ID  ADDRESS`` table)."""
    p = "high-availability"
    lines = [f"{p} enabled" if st.enabled else f"{p} disabled"]
    lines.append(f"{p} status mode {st.mode}")
    if st.current_id:
        lines.append(f"{p} status current-id {st.current_id}")
    lines.append(f"{p} status assigned-role {st.assigned_role}")
    if st.be_secondary_result:
        lines.append(f"{p} status be-secondary-result {quote(st.be_secondary_result)}")
    if st.primary_id:
        lines.append(f"{p} status primary-id {st.primary_id}")
    lines.append(f"{p} status read-only-mode {str(st.read_only).lower()}")
    want = " ".join([p, *args])
    out = [ln for ln in lines if ln == want or ln.startswith(want + " ")]
    rows = st.secondaries
    if rows and (not args or args in (["status"], ["status", "connected-secondary"])):
        out += table(("ID", "ADDRESS"), rows)
    return out or [NO_ENTRIES]


def sync_lines(report: SyncReport) -> list[str]:
    if not report.started:
        return list(report.errors)
    out = list(RELOAD_BANNER)
    for node, ok in report.synced:
        out += ["sync-result {", f"    node {node}", f"    result {str(ok).lower()}", "}"]
    if not report.ok:
        return [*out, ">>> System upgrade has been aborted.", *report.errors]
    return [*out, ">>> System upgrade has completed successfully.", *reload_blocks(report.loaded)]


def alarm_lines(alarms: list[Alarm]) -> list[str]:
    """``show alarms alarm-list`` for the HA alarms, in the layout of the gitbook's
    high-availability.md examples (one ``status-change`` block per change)."""
    out = []
    for alarm in alarms:
        when, text, cleared = alarm.changes[-1]
        severity = "cleared" if cleared else "critical"
        head = f"alarms alarm-list alarm ncs {alarm.kind} /high-availability/ha-node[id='{alarm.node_id}']"
        out += [
            # The gitbook's ha-secondary-down example shows the empty specific-problem key.
            head + (' ""' if alarm.kind == "ha-secondary-down" else ""),
            f" is-cleared              {str(cleared).lower()}",
            f" last-status-change      {when}",
            f" last-perceived-severity {severity}",
            f' last-alarm-text         "{text}"',
        ]
        for when, text, cleared in alarm.changes:
            out += [
                f" status-change {when}",
                f"  received-time      {when}",
                f"  perceived-severity {'cleared' if cleared else 'critical'}",
                f'  alarm-text         "{text}"',
            ]
    return out or [NO_ENTRIES]
